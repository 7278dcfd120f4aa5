"""Pieces of our training loop shared by every trainer: evaluation, metrics, progress, signals."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmkit.errors import UserError


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x)  # our Llama returns logits; an HF model returns an output object
    return out if torch.is_tensor(out) else out.logits  # (B, T, V)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits_of(model, x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches, device: str, amp) -> dict[str, float]:
    """Mean next-token loss over every window given (the whole split unless capped)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with amp():
            logits = logits_of(model, x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        total += float(loss)
        count += y.numel()
    model.train(was_training)
    mean = total / max(count, 1)
    return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_tokens": count}


class MetricsLog:
    """metrics.jsonl in the run folder (appended: a resumed run keeps its history), and optionally
    TensorBoard or MLflow when installed."""

    def __init__(self, path: Path | None, sink: str = "none"):
        self.path = path
        self._tb = None
        self._mlflow = None
        if path is None or sink == "none":
            return
        if sink == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.log = 'tensorboard' needs the tensorboard package: pip install tensorboard") from None
            self._tb = SummaryWriter(log_dir=str(path.parent / "tensorboard"))
        elif sink == "mlflow":
            try:
                import mlflow
            except ImportError:
                raise UserError("train.log = 'mlflow' needs the mlflow package: pip install mlflow") from None
            mlflow.set_tracking_uri(f"file://{path.parent / 'mlruns'}")
            self._mlflow = mlflow
            mlflow.start_run(run_name=path.parent.name)

    def write(self, **row: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, row["step"])
        if self._mlflow is not None:
            self._mlflow.log_metrics(numbers, step=row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tok_s]:,.0f} tok/s"),
        TextColumn("val {task.fields[val]}"), TimeRemainingColumn(), console=console, transient=False,
    )


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the current step and stops."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def plot_losses(metrics: list[dict[str, Any]], out: Path) -> Path | None:
    train = {}
    val = {}
    for row in metrics:  # later rows win: a resumed run's redone steps replace the first try
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "val_loss" in row:
            val[row["step"]] = row["val_loss"]
    if not train:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))  # no pyplot: it costs a second to import and keeps global state
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps = sorted(train)
    ax.plot(steps, [train[s] for s in steps], label="train", color="#4c72b0", linewidth=1)
    if val:
        vs = sorted(val)
        ax.plot(vs, [val[s] for s in vs], label="val", color="#dd8452", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
