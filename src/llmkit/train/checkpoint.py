"""Resumable checkpoints: weights, optimizer, step, RNG and sampler state, written atomically.

A checkpoint is a folder `checkpoints/step-000060/` with `model.safetensors` and `state.pt`
(optimizer moments, generator states; loaded with weights_only=True, so no pickle code runs).
It is written under a temporary name and renamed, so a kill mid-write leaves the previous
checkpoint as the latest usable one. Only the last K are kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmkit.workspace import TMP_PREFIX, atomic_dir, remove_stale_tmp

STEP_PREFIX = "step-"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses shared tensors, so store each name's own copy.
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int) -> Path:
    folder = run_dir / "checkpoints" / f"{STEP_PREFIX}{step:06d}"
    with atomic_dir(folder) as tmp:
        save_file(model_state(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    remove_stale_tmp(root)  # a checkpoint write that was killed: never half-used, now gone
    found = [p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and not p.name.startswith(TMP_PREFIX)
             and (p / "state.pt").exists() and (p / "model.safetensors").exists()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    weights = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    return torch.load(folder / "state.pt", weights_only=True, map_location="cpu")


def save_weights(folder: Path, model: torch.nn.Module) -> None:
    with atomic_dir(folder) as tmp:
        save_file(model_state(model), str(tmp / "model.safetensors"))


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
