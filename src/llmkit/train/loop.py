"""The training loop every trainer runs (`fit`), and its parts: progress, signals (its metrics log and loss
plot: train/metrics.py; the language-model loss and evaluation pretraining gives it: train/lm_loss.py).

A trainer builds a `Job`: the module whose `requires_grad` parameters are optimised (a LoRA job trains
adapters only), its micro-batches by index, its loss and its evaluation, the metric that picks the best
weights, and whatever else its checkpoint must hold (pretraining's data sampler). `fit` runs it: AdamW
(built by the trainer), linear warm-up then cosine, gradient accumulation and clipping, autocast,
evaluation every N steps or each epoch, the best weights kept, early stopping and a time limit, the stop
flag (SIGINT/SIGTERM: checkpoint, then `TrainingInterrupted`), resumable checkpoints, metrics and
progress, and under torchrun the per-rank parts (no_sync on accumulation steps, the mean loss, rank 0
writes).

Exact resume: a checkpoint holds the trained weights, the optimizer, the step, torch's RNG state and
the job's own state; batches are a function of their index (or of the restored sampler), so a resumed
run sees the batches the uninterrupted one would have, and its weights come out the same.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmkit.errors import UserError
from llmkit.train.bf16_matmul import release_scratch
from llmkit.train.checkpoint import (
    TrainingInterrupted,
    list_checkpoints,
    load_state,
    model_state,
    save_checkpoint,
)
from llmkit.train.distributed import Dist
from llmkit.train.memory import Releaser, map_large_blocks
from llmkit.train.metrics import MetricsLog
from llmkit.train.optim import autocast, lr_at
from llmkit.workspace import atomic_dir


def progress_bar(console) -> Progress | ProgressLines:
    """A live bar on a terminal; piped into a log, a line every PROGRESS_LINE_S seconds and one at the end."""
    if not console.is_terminal and not console.quiet:
        return ProgressLines(console)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tok_s]:,.0f} tok/s"),
        TextColumn("{task.fields[val]}"), TimeRemainingColumn(), console=console, transient=False,
    )


PROGRESS_LINE_S = 30.0


class ProgressLines:
    """The training bar's fields as plain lines, for output that is not a terminal (a log file, CI): rich draws
    nothing there until the end, so a 15-minute run said nothing for 15 minutes, then one bar cut to 80 columns."""

    def __init__(self, console, every_s: float = PROGRESS_LINE_S):
        self.console, self.every_s = console, every_s
        self.fields: dict[str, Any] = {}

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        if self.fields and self._text() != self.printed:  # the last state, with the last evaluation
            self._print()

    def add_task(self, description: str, total: int, completed: int = 0, **fields) -> int:
        self.fields = {"description": description, "total": total, "completed": completed, **fields}
        self.started, self.start_step, self.printed, self.last = time.time(), completed, "", time.time()
        return 0

    def update(self, task: int, **fields) -> None:
        self.fields.update(fields)
        if time.time() - self.last >= self.every_s:
            self._print()

    def _print(self) -> None:
        self.printed, self.last = self._text(), time.time()
        self.console.print(self.printed, markup=False, highlight=False, soft_wrap=True)  # a log line is never cut

    def _text(self) -> str:
        f, now = self.fields, time.time()
        step, total = f["completed"], f["total"]
        rate = (step - self.start_step) / max(now - self.started, 1e-9)  # steps per second over this run
        eta = f", eta {(total - step) / rate:,.0f} s" if 0 < rate and step < total else ""
        val = f", {f['val']}" if f.get("val") else ""
        return (f"{f['description']} step {step}/{total} ({100 * step / max(total, 1):.0f} %), loss {f['loss']:.4f}, "
                f"{f['tok_s']:,.0f} tok/s{val}{eta}")


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


# -- the loop --------------------------------------------------------------------------------------

# Called after every step of any run in this context as watcher(run_id, step, evaluation or None);
# `llmkit tune` reports evaluations to Optuna here and ends a pruned trial by raising from it, so no
# trainer has to pass a callback through its own signature.
_watchers: ContextVar[tuple[Callable[[str, int, dict[str, float] | None], None], ...]] = ContextVar("watchers", default=())


@contextmanager
def watching(watcher: Callable[[str, int, dict[str, float] | None], None]) -> Iterator[None]:
    token = _watchers.set((*_watchers.get(), watcher))
    try:
        yield
    finally:
        _watchers.reset(token)


@dataclass
class Job:
    stage: str                                       # pretrain | sft | classify | distill: how to resume
    model: torch.nn.Module                           # owns the parameters; requires_grad marks what is trained
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], Any]                      # micro-batch by its index (step * grad_accum + micro)
    # -> (mean loss, tokens in the batch[, figures logged beside the loss, e.g. rewards])
    loss: Callable[[torch.nn.Module, Any], tuple]
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    score: str                                       # the evaluation metric that picks the best weights
    total_steps: int
    lr: float
    warmup_steps: int
    min_lr: float = 0.0
    higher_is_better: bool = False
    grad_accum: int = 1
    grad_clip: float = 1.0
    eval_every: int = 0                              # 0: at the end of each epoch
    steps_per_epoch: int | None = None               # for eval_every 0 and the epoch column
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    early_stopping: int = 0                          # evaluations without improvement before stopping (0 = off)
    precision: str = "fp32"
    device: str = "cpu"
    trainable_only: bool = True                      # checkpoint the trained parameters only (fine-tuning)
    # What runs the forward, made after a resume has loaded the weights (DDP / FSDP wrapping, torch.compile).
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    state: Callable[[], dict[str, Any]] = dict       # what else the checkpoint holds (a sampler's state)
    load_state: Callable[[dict[str, Any]], None] = lambda state: None
    dist: Dist = field(default_factory=Dist)
    tokens_per_step: int | None = None               # the same every step (pretraining); else counted
    # whether a model holding the weights of this step is registered (checkpoint.model_made_at): a run killed
    # between its last checkpoint and writing its model has none, and a resume finishes it instead of refusing
    made_model_at: Callable[[int], bool] = lambda step: True


@dataclass
class LoopResult:
    step: int
    seconds: float
    tokens_seen: int
    best: dict[str, Any] | None      # the best evaluation (with its step), None before any
    last_eval: dict[str, float]
    stopped_early: bool


def trained_weights(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    if not trainable_only:
        return model_state(model)
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], trainable_only: bool) -> None:
    if not trainable_only:
        model.load_state_dict(weights, strict=True)
        return
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != names:
        missing, extra = sorted(names - set(weights))[:3], sorted(set(weights) - names)[:3]
        raise UserError(f"checkpoint does not match the model (missing {missing}, unexpected {extra}); "
                        "was the run's base model or LoRA setting changed?")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, value in weights.items():
            params[n].copy_(value)


def _restore(job: Job, run_dir: Path) -> tuple[int, float | None, int, int]:
    """Resume from the last checkpoint: (step, best score, evaluations, evaluations without gain)."""
    from safetensors.torch import load_file

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return 0, None, 0, 0
    last = checkpoints[-1]
    load_trained_weights(job.model, load_file(str(last / "model.safetensors")), job.trainable_only)
    state = load_state(last)
    job.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    job.load_state(state.get("job", state))  # before the loop moved here, the sampler sat at the top level
    best = state.get("best", state.get("best_val"))
    best = None if best is None or math.isinf(best) else float(best)
    return int(state["step"]), best, int(state.get("evals", 0)), int(state.get("evals_without_gain", 0))


def fit(job: Job, run_dir: Path, run_id: str, metrics: MetricsLog, console=None, time_limit_s: float | None = None,
        stop_at_step: int | None = None) -> LoopResult:
    """Train `job` to its total steps (or an early stop, the time limit, a signal) in `run_dir`.

    Longer than our usual function on purpose: one step of training is read top to bottom here, as in
    nanoGPT; what stands alone (restoring, checkpoint files, weight selection) is outside it."""
    from safetensors.torch import load_file, save_file

    d, model = job.dist, job.model
    amp = lambda: autocast(job.precision, job.device)  # noqa: E731
    step, best, evals, without_gain = _restore(job, run_dir)
    metrics.forget_after(step)
    early = bool(job.early_stopping and without_gain >= job.early_stopping) and step < job.total_steps
    if step and (step >= job.total_steps or early) and job.made_model_at(step):  # it would register the same again
        if early:  # it would stop again at its next evaluation, as a new version
            raise UserError(f"run {run_id} stopped early at step {step} ({without_gain} evaluation{'s' * (without_gain > 1)} without a better "
                            f"{job.score}) and its model holds them: nothing to train; start a new run instead")
        raise UserError(f"run {run_id} already trained {step} steps and its model holds them: nothing to train; pass "
                        f"a --max-steps above {step} to continue it")
    forward = job.wrap(model)

    def better(value: float) -> bool:
        return best is None or (value > best if job.higher_is_better else value < best)

    def checkpoint_state() -> dict[str, Any]:
        state = {"step": step, "optimizer": job.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "best": best, "evals": evals, "evals_without_gain": without_gain, "job": job.state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    trained = [p for p in model.parameters() if p.requires_grad]
    started = time.time()
    last_eval: dict[str, float] = {}
    tokens_seen, stopped_early = 0, False
    forward.train()
    with StopFlag() as stop, progress_bar(console if console is not None else _quiet()) as bar:
        task = bar.add_task(job.stage, total=job.total_steps, completed=step, loss=float("nan"), tok_s=0.0, val="")
        t_last = time.time()
        releaser = Releaser(torch.get_num_threads())
        map_large_blocks()  # large tensors in their own mappings: a heap without their holes (train/memory.py)
        while step < job.total_steps:
            lr = lr_at(step, job.lr, job.min_lr, job.warmup_steps, job.total_steps)
            for group in job.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, tokens, extra = 0.0, 0, {}
            for micro in range(job.grad_accum):
                batch = job.batch(step * job.grad_accum + micro)
                last = micro == job.grad_accum - 1
                # Under DDP only the last micro-batch of a step all-reduces its gradients.
                sync = forward.no_sync() if (d.enabled and not last and hasattr(forward, "no_sync")) else nullcontext()
                with sync, amp():
                    loss, n, *more = job.loss(forward, batch)
                    loss = loss / job.grad_accum
                for key, value in (more[0] if more else {}).items():  # a trainer's own figures, averaged over the step
                    extra[key] = extra.get(key, 0.0) + float(value) / job.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
                tokens += n
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, job.grad_clip)) if job.grad_clip > 0 else None
            job.optimizer.step()
            job.optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = d.mean(loss_sum)
            tokens = job.tokens_per_step or tokens * d.world
            tokens_seen += tokens
            now = time.time()
            tok_s = tokens / max(now - t_last, 1e-9)
            releaser.after_step(now - t_last)  # the step's freed transients back to the OS when cheap (train/memory.py)
            t_last = now
            metrics.write(step=step, loss=loss_value, lr=lr, grad_norm=grad_norm, tokens_per_s=round(tok_s, 1),
                          **{k: round(v, 6) for k, v in extra.items()})
            bar.update(task, completed=step, loss=loss_value, tok_s=tok_s)

            out_of_time = time_limit_s is not None and now - started > time_limit_s
            per_epoch = job.steps_per_epoch or job.total_steps
            at_eval = step % job.eval_every == 0 if job.eval_every else step % per_epoch == 0
            if at_eval or step == job.total_steps or out_of_time:
                with amp():
                    last_eval = job.evaluate(model)
                forward.train()
                epoch = {"epoch": round(step / job.steps_per_epoch, 3)} if job.steps_per_epoch else {}
                metrics.write(step=step, **epoch, **last_eval)
                bar.update(task, val=f"{job.score} {last_eval[job.score]:.4f}")
                evals += 1
                if better(last_eval[job.score]):
                    best, without_gain = float(last_eval[job.score]), 0
                    if d.is_main:
                        with atomic_dir(run_dir / "best") as tmp:
                            save_file(trained_weights(model, job.trainable_only), str(tmp / "model.safetensors"))
                            (tmp / "metrics.json").write_text(json.dumps({"step": step, **last_eval}))
                else:
                    without_gain += 1
                stopped_early = bool(job.early_stopping and without_gain >= job.early_stopping)
            interrupted = stop.signal is not None or (stop_at_step is not None and step >= stop_at_step)
            # The run's end is a checkpoint too, whatever checkpoint_every says: resuming a finished run found only an
            # older one (a Ctrl-C at step 788 of 3000) and trained from there again, registering a version each time.
            ends = step == job.total_steps or stopped_early or out_of_time
            if d.is_main and (step % job.checkpoint_every == 0 or interrupted or ends):
                save_checkpoint(run_dir, step, model, checkpoint_state(), job.keep_checkpoints,
                                weights=trained_weights(model, job.trainable_only))
            d.barrier()
            if interrupted and step < job.total_steps:
                metrics.close()
                raise TrainingInterrupted(step, run_id, job.stage, stop.signal)
            try:
                for watcher in _watchers.get():
                    watcher(run_id, step, last_eval if at_eval or step == job.total_steps or out_of_time else None)
            except BaseException:  # a watcher ending the run (a pruned trial) leaves the log closed
                metrics.close()
                raise
            if stopped_early or out_of_time:
                break

    metrics.close()
    release_scratch()  # the emulated bf16 matmuls' work buffers: as large as the run's largest fp32 product
    seconds = time.time() - started
    best_dir = run_dir / "best"
    best_metrics = None
    if (best_dir / "model.safetensors").exists():
        load_trained_weights(model, load_file(str(best_dir / "model.safetensors")), job.trainable_only)
        if (best_dir / "metrics.json").exists():
            best_metrics = json.loads((best_dir / "metrics.json").read_text())
    model.eval()
    if not last_eval and best_metrics is None:  # a run finished from its last checkpoint: nothing evaluated here
        with amp():
            last_eval = job.evaluate(model)
    return LoopResult(step, seconds, tokens_seen, best_metrics, last_eval, stopped_early)


def _quiet():
    from rich.console import Console

    return Console(quiet=True)
