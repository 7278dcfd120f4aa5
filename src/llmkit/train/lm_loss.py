"""The next-token loss of a causal LM over token windows, and its evaluation: what pretraining hands `fit`.

On llmkit's own Llama the head runs chunk by chunk inside the loss (train/chunked_loss), called through the
model's forward so that DDP and torch.compile wrappers see it; any other causal LM gives its logits and the
plain cross-entropy over them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmkit.models.llama import Llama
from llmkit.train.chunked_loss import linear_cross_entropy


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x)  # our Llama returns logits; an HF model returns an output object
    return out if torch.is_tensor(out) else out.logits  # (B, T, V)


def _own_llama(model: torch.nn.Module) -> Llama | None:
    """Our Llama under any DDP (`.module`) or torch.compile (`._orig_mod`) wrappers, or None."""
    while not isinstance(model, Llama):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return None
        model = inner
    return model


def lm_loss_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of y (B, T) given x (B, T). On our Llama the head runs chunk by chunk
    inside the loss (train/chunked_loss): the (B, T, V) logits, their fp32 copy and its gradient are never
    whole -- with a vocabulary of thousands and a small model they were most of a step (nano, 6k characters:
    57 -> 35 ms a step)."""
    own = _own_llama(model)
    if own is not None:
        states = model(input_ids=x, hidden=True)  # (B, T, C)
        return linear_cross_entropy(states.reshape(-1, states.shape[-1]), own.lm_head.weight, y.reshape(-1))
    logits = logits_of(model, x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return lm_loss_sum(model, x, y) / y.numel()


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, batches, device: str, amp) -> dict[str, float]:
    """Mean next-token loss over every window given (the whole split unless capped)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with amp():
            total += float(lm_loss_sum(model, x, y))
        count += y.numel()
    model.train(was_training)
    mean = total / max(count, 1)
    return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_tokens": count}
