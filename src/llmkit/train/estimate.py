"""`llmkit train sft --estimate`: what a run would cost, from a two-step probe, before committing to it.

The probe builds the run exactly as `sft` would (same path, model, batches, optimizer, precision), then
trains two steps on the epoch's largest micro-batch: the first pays one-off costs (allocator, kernels),
the second is timed. Time scales with the tokens a batch holds (padding included), so seconds per epoch
are the second step's seconds per token times the epoch's tokens. Peak memory is the process's peak
after the probe, which has held the model, the data and the largest batch's activations and gradients:
what the run's peak will be, evaluation aside. Nothing is registered and nothing is written.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from llmkit.config import SftConfig
from llmkit.registry import Registry
from llmkit.train.finetune import count_params, peak_memory_mb
from llmkit.train.optim import adamw, autocast, resolve_precision
from llmkit.train.supervised import prepare_sft
from llmkit.workspace import Workspace


def estimate_sft(cfg: SftConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None) -> dict[str, Any]:
    setup = prepare_sft(cfg, ws, registry, console)
    cfg, job = setup.cfg, setup.job
    model = job.model
    device = next(model.parameters()).device.type
    precision = resolve_precision(cfg.precision, device)
    trainable, total = count_params(model)
    batches = job.epoch_batches(0)
    sizes = [b["input_ids"].numel() for b in batches]
    largest = batches[max(range(len(batches)), key=sizes.__getitem__)]
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, 0.999), device)
    trained = [p for p in model.parameters() if p.requires_grad]
    model.train()
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        for _ in range(cfg.grad_accum):
            with autocast(precision, device):
                loss, _n = job.loss(model, largest)
            (loss / cfg.grad_accum).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
    per_token = seconds / (max(sizes) * cfg.grad_accum)
    steps_per_epoch = max(1, len(batches) // cfg.grad_accum)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    epoch_s = per_token * sum(sizes[: steps_per_epoch * cfg.grad_accum])
    result = {"path": setup.path, "method": cfg.method, "precision": precision, "parameters": total,
              "trainable_parameters": trainable, "peak_memory_mb": round(peak_memory_mb(device), 1),
              "seconds_per_step": round(seconds, 3), "steps_per_epoch": steps_per_epoch,
              "seconds_per_epoch": round(epoch_s, 1), "steps": steps,
              "seconds": round(epoch_s * steps / steps_per_epoch, 1)}
    if console is not None:
        console.print(f"estimate ({result['path']} path, {precision}): {total:,} parameters, {trainable:,} trainable; "
                      f"peak memory ~{result['peak_memory_mb']:.0f} MiB; ~{result['seconds_per_epoch']:.0f} s per epoch of "
                      f"{steps_per_epoch} steps ({seconds:.2f} s for the largest batch); ~{result['seconds']:.0f} s for "
                      f"{steps} steps, evaluation aside. Nothing was registered.")
    return result
