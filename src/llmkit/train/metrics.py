"""A run's metrics: metrics.jsonl in the run folder (optionally TensorBoard or MLflow beside it), read back
whole rows only, and the loss curve every trainer saves as plots/loss.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmkit.errors import UserError


class MetricsLog:
    """metrics.jsonl in the run folder (appended: a resumed run keeps its history), and optionally
    TensorBoard or MLflow when installed."""

    def __init__(self, path: Path | None, sink: str = "none"):
        self.path = path
        self._tb = None
        self._mlflow = None
        if path is not None and path.exists():
            _drop_partial_line(path)
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

    def forget_after(self, step: int) -> None:
        """Drop the rows of steps after `step`, the checkpoint a run resumes from: it does them again, and their
        first try would stay in the file beside the second (as HF Trainer's log, the file reads as one run)."""
        if self.path is None or not self.path.exists():
            return
        rows = self.path.read_text(encoding="utf-8").split("\n")[:-1]
        kept = [line for line in rows if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) < len(rows):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(self.path)

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


def _drop_partial_line(path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline: cut it, so the resumed run's
    rows do not glue onto it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete rows of metrics.jsonl (a row still being written, or cut by a kill, is left out)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # after the last newline: nothing, or a partial row
    return [json.loads(line) for line in lines if line.strip()]


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

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

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
