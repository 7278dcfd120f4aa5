"""What SFT, classification and distillation share on top of the training loop (`train.loop.fit`).

A stage builds a `FinetuneJob`: the module to train (its `requires_grad` parameters are what is
optimised, so a LoRA job trains adapters only), the micro-batches of each epoch, a loss and an
evaluation. `fit` turns it into the loop's `Job` — epochs into steps, AdamW, warm-up then cosine to
zero — runs it in a registered run (resumed when asked), and reports the parameter, memory and
speed figures every fine-tuning run reports, with a loss plot.

Batch order is a function of (seed, epoch), so a resumed run sees the batches the uninterrupted
run would have seen, and its weights come out the same.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.config import FinetuneConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.checkpoint import latest_step, model_made_at, start_run, tracks_runs
from llmkit.train.loop import Job
from llmkit.train.loop import fit as loop_fit
from llmkit.train.metrics import MetricsLog, plot_losses, read_metrics
from llmkit.train.optim import adamw, resolve_precision
from llmkit.workspace import Workspace


@dataclass
class FinetuneJob:
    stage: str                                   # sft | classify | distill
    name: str                                    # the model's name in the registry
    model: torch.nn.Module                       # trained in place; requires_grad marks what is optimised
    epoch_batches: Callable[[int], list[Any]]    # epoch -> its micro-batches, the same on every call
    loss: Callable[[torch.nn.Module, Any], tuple]  # -> (mean loss, tokens in the batch[, logged figures])
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    score: str                                   # the metric that picks the best weights
    higher_is_better: bool = False
    parents: list[tuple[str, str]] = field(default_factory=list)  # (record id, relation) of the run
    info: dict[str, Any] = field(default_factory=dict)            # extra facts for the summary
    # called with (total steps, precision) once they are known, before the first step (SFT: `compile: auto`)
    prepare: Callable[[int, str], None] | None = None


@dataclass
class Fitted:
    model: torch.nn.Module       # with the best weights loaded
    run_id: str
    run_dir: Path
    summary: dict[str, Any]


def eval_source(split: str) -> str:
    """What a trainer's 'N for eval' adds when it evaluates on another split than val (its figures keep val_ names)."""
    return "" if split == "val" else f" (the {split} split: val is empty)"


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def enable_checkpointing(model: torch.nn.Module, key: str) -> None:
    """Activation checkpointing on an HF model, before any LoRA wrapping.

    With a frozen base nothing before the first adapter needs a gradient, so the checkpointed
    blocks would see inputs that do not require grad and skip the adapters' backward; making the
    embeddings' output require grad keeps the graph connected.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"{key}: this model's architecture does not support gradient checkpointing; turn it off")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


@tracks_runs
def fit(job: FinetuneJob, cfg: FinetuneConfig, section: str, ws: Workspace, registry: Registry, run_dir: Path | None,
        run_id: str | None, console=None, stop_at_step: int | None = None, time_limit_s: float | None = None) -> Fitted:
    device = next(job.model.parameters()).device.type
    precision = resolve_precision(cfg.precision, device)
    model = job.model
    trainable, total = count_params(model)
    if trainable == 0:
        raise UserError(f"{section}: nothing to train (no parameter requires a gradient)")

    torch.manual_seed(cfg.seed)
    micro_per_epoch = len(job.epoch_batches(0))
    if micro_per_epoch == 0:
        raise UserError(f"{section}: the train split gives no batches; check the dataset and {section}.max_length")
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, 0.999), device)

    if run_dir is None:
        run_dir, run_id = start_run(ws, registry, job.name, section, cfg, job.parents)
    assert run_id is not None
    resume_at = latest_step(run_dir)
    if console is not None:
        console.print(f"{section} [bold]{job.name}[/bold]: {trainable:,} trainable of {total:,} parameters "
                      f"({100 * trainable / total:.2f}%); {micro_per_epoch} batches per epoch, {total_steps} steps; "
                      f"precision {precision}; device {device}")
        console.print(f"run {run_id} at {run_dir}" + (f" (resuming at step {resume_at})" if resume_at else ""))

    if job.prepare is not None:
        job.prepare(total_steps, precision)

    cached: dict[int, list] = {}

    def micro_batch(index: int):
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in cached:
            cached.clear()
            cached[epoch] = job.epoch_batches(epoch)
        return cached[epoch][pos]

    loop_job = Job(stage=section, model=model, optimizer=optimizer, batch=micro_batch, loss=job.loss,
                   evaluate=job.evaluate, score=job.score, higher_is_better=job.higher_is_better,
                   total_steps=total_steps, lr=cfg.lr, warmup_steps=round(cfg.warmup_ratio * total_steps),
                   grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
                   steps_per_epoch=steps_per_epoch, checkpoint_every=cfg.checkpoint_every,
                   keep_checkpoints=cfg.keep_checkpoints, precision=precision, device=device, trainable_only=True,
                   made_model_at=lambda at: model_made_at(registry, run_id, at))
    result = loop_fit(loop_job, run_dir, run_id, MetricsLog(run_dir / "metrics.jsonl", cfg.log), console,
                      stop_at_step=stop_at_step, time_limit_s=time_limit_s)
    best = result.best or {"step": result.step, **result.last_eval}
    plot_losses(read_metrics(run_dir / "metrics.jsonl"), run_dir / "plots" / "loss.png")
    summary = {**{k: v for k, v in best.items() if k != "step"}, "best_step": best.get("step"),
               "steps": result.step, "epochs": round(result.step / steps_per_epoch, 3), "trainable_parameters": trainable,
               "total_parameters": total, "peak_memory_mb": round(peak_memory_mb(device), 1),
               "seconds": round(result.seconds, 2), "tokens_per_s": round(result.tokens_seen / max(result.seconds, 1e-9), 1),
               "precision": precision, **job.info}
    registry.update_metrics(run_id, summary)
    return Fitted(model, run_id, run_dir, summary)
