"""The loop SFT, classification and distillation share.

A stage builds a `Job`: the module to train (its `requires_grad` parameters are what is optimised,
so a LoRA job trains adapters only), the micro-batches of each epoch, a loss and an evaluation.
`fit` runs it: AdamW, warm-up + cosine, gradient accumulation and clipping, evaluation each epoch
(or every N steps), the best weights kept, resumable checkpoints holding the trainable parameters
only, metrics, a loss plot, and the parameter and peak-memory figures every run reports.

Batch order is a function of (seed, epoch), so a resumed run sees the batches the uninterrupted
run would have seen, and its weights come out the same.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from llmkit.config import FinetuneConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.checkpoint import list_checkpoints
from llmkit.train.loop import MetricsLog, StopFlag, plot_losses, progress_bar, read_metrics
from llmkit.train.optim import adamw, autocast, lr_at, resolve_precision
from llmkit.workspace import Workspace, atomic_dir


class TrainingInterrupted(Exception):
    """Raised after the checkpoint on SIGINT/SIGTERM (or stop_at_step) is written."""

    def __init__(self, step: int, run_id: str, stage: str):
        super().__init__(f"stopped at step {step}; continue with: llmkit train {stage} --resume {run_id}")
        self.step, self.run_id = step, run_id


@dataclass
class Job:
    stage: str                                   # sft | classify | distill
    name: str                                    # the model's name in the registry
    model: torch.nn.Module                       # trained in place; requires_grad marks what is optimised
    epoch_batches: Callable[[int], list[Any]]    # epoch -> its micro-batches, the same on every call
    loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, int]]  # -> (mean loss, tokens in the batch)
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    score: str                                   # the metric that picks the best weights
    higher_is_better: bool = False
    parents: list[tuple[str, str]] = field(default_factory=list)  # (record id, relation) of the run
    info: dict[str, Any] = field(default_factory=dict)            # extra facts for the summary


@dataclass
class Fitted:
    model: torch.nn.Module       # with the best weights loaded
    run_id: str
    run_dir: Path
    summary: dict[str, Any]


def resume_config(cfg: FinetuneConfig, section: str, registry: Registry) -> tuple[Any, Path | None, str | None]:
    """For --resume: the run's saved config (the run is defined by it), its folder and id."""
    if not cfg.resume:
        return cfg, None, None
    path = Path(cfg.resume)
    rec = None if path.is_dir() else registry.find(cfg.resume, "run")
    if rec is not None:
        path = Path(rec.path)
    if not (path / "config.yaml").exists():
        raise UserError(f"{section}.resume = '{cfg.resume}': no run with that id, name or folder (llmkit ls runs lists them)")
    saved_body = yaml.safe_load((path / "config.yaml").read_text())
    if section not in saved_body:
        raise UserError(f"{section}.resume = '{cfg.resume}': that run is a '{next(iter(saved_body))}' run, not {section}")
    saved = type(cfg).model_validate(saved_body[section])
    run_id = rec.id if rec else json.loads((path / "run.json").read_text())["id"]
    return saved, path, run_id


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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != names:
        missing, extra = sorted(names - set(weights))[:3], sorted(set(weights) - names)[:3]
        raise UserError(f"checkpoint does not match the model (missing {missing}, unexpected {extra}); "
                        "was the run's base model or LoRA setting changed?")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, value in weights.items():
            params[n].copy_(value)


def _save_checkpoint(run_dir: Path, step: int, model, state: dict, keep: int) -> None:
    folder = run_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def fit(job: Job, cfg: FinetuneConfig, section: str, ws: Workspace, registry: Registry, run_dir: Path | None,
        run_id: str | None, console=None, stop_at_step: int | None = None) -> Fitted:
    device = next(job.model.parameters()).device.type
    precision = resolve_precision(cfg.precision, device)
    amp = lambda: autocast(precision, device)  # noqa: E731
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
    warmup = round(cfg.warmup_ratio * total_steps)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, 0.999), device)
    step, best, evals = 0, None, 0

    if run_dir is None:
        run_dir = ws.folder("runs", f"{job.name}-{uuid.uuid4().hex[:6]}")
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({section: cfg.model_dump()}, sort_keys=False, allow_unicode=True))
        rec = registry.add("run", job.name, kind=section, path=run_dir, params=cfg.model_dump(), parents=job.parents)
        run_id = rec.id
        (run_dir / "run.json").write_text(json.dumps({"id": run_id}))
    else:
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            load_trainable(model, load_file(str(checkpoints[-1] / "model.safetensors")))
            state = torch.load(checkpoints[-1] / "state.pt", weights_only=True, map_location="cpu")
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            step, best, evals = int(state["step"]), state["best"], int(state["evals"])
    assert run_id is not None

    log = console
    if log is not None:
        log.print(f"{section} [bold]{job.name}[/bold]: {trainable:,} trainable of {total:,} parameters "
                  f"({100 * trainable / total:.2f}%); {micro_per_epoch} batches per epoch, {total_steps} steps; "
                  f"precision {precision}; device {device}")
        log.print(f"run {run_id} at {run_dir}" + (f" (resuming at step {step})" if step else ""))
    metrics = MetricsLog(run_dir / "metrics.jsonl", cfg.log)

    def is_better(value: float) -> bool:
        return best is None or (value > best if job.higher_is_better else value < best)

    cached: dict[int, list] = {}

    def micro_batch(index: int):
        epoch, pos = divmod(index, micro_per_epoch)
        if epoch not in cached:
            cached.clear()
            cached[epoch] = job.epoch_batches(epoch)
        return cached[epoch][pos]

    started = time.time()
    last_eval: dict[str, float] = {}
    tokens_seen = 0
    model.train()
    with StopFlag() as stop, progress_bar(log if log is not None else _quiet()) as bar:
        task = bar.add_task(section, total=total_steps, completed=step, loss=float("nan"), tok_s=0.0, val="-")
        t_last = time.time()
        while step < total_steps:
            lr = lr_at(step, cfg.lr, 0.0, warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                batch = micro_batch(step * cfg.grad_accum + micro)
                with amp():
                    loss, n = job.loss(model, batch)
                (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / cfg.grad_accum
                tokens += n
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens
            now = time.time()
            tok_s = tokens / max(now - t_last, 1e-9)
            t_last = now
            metrics.write(step=step, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens_per_s=round(tok_s, 1))
            bar.update(task, completed=step, loss=loss_sum, tok_s=tok_s)

            at_eval = step % cfg.eval_every == 0 if cfg.eval_every else step % steps_per_epoch == 0
            if at_eval or step == total_steps:
                with amp():
                    last_eval = job.evaluate(model)
                model.train()
                metrics.write(step=step, epoch=round(step / steps_per_epoch, 3), **last_eval)
                bar.update(task, val=f"{job.score} {last_eval[job.score]:.4f}")
                evals += 1
                if is_better(last_eval[job.score]):
                    best = float(last_eval[job.score])
                    with atomic_dir(run_dir / "best") as tmp:
                        save_file(trainable_state(model), str(tmp / "model.safetensors"))
                        (tmp / "metrics.json").write_text(json.dumps({"step": step, **last_eval}))
            interrupted = stop.signal is not None or (stop_at_step is not None and step >= stop_at_step)
            if step % cfg.checkpoint_every == 0 or interrupted:
                _save_checkpoint(run_dir, step, model, {"step": step, "optimizer": optimizer.state_dict(),
                                                         "torch_rng": torch.get_rng_state(), "best": best,
                                                         "evals": evals}, cfg.keep_checkpoints)
            if interrupted and step < total_steps:
                metrics.close()
                raise TrainingInterrupted(step, run_id, section)

    metrics.close()
    seconds = time.time() - started
    if (run_dir / "best" / "model.safetensors").exists():
        load_trainable(model, load_file(str(run_dir / "best" / "model.safetensors")))
        best_metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    else:
        best_metrics = {"step": step, **last_eval}
    model.eval()
    plot_losses(read_metrics(run_dir / "metrics.jsonl"), run_dir / "plots" / "loss.png")
    summary = {**{k: v for k, v in best_metrics.items() if k != "step"}, "best_step": best_metrics.get("step"),
               "steps": step, "epochs": round(step / steps_per_epoch, 3), "trainable_parameters": trainable,
               "total_parameters": total, "peak_memory_mb": round(peak_memory_mb(device), 1),
               "seconds": round(seconds, 2), "tokens_per_s": round(tokens_seen / max(seconds, 1e-9), 1),
               "precision": precision, **job.info}
    registry.update_metrics(run_id, summary)
    return Fitted(model, run_id, run_dir, summary)


def _quiet():
    from rich.console import Console

    return Console(quiet=True)
