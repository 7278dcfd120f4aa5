"""Cross-entropy of a linear head without the whole logits tensor: chunk by chunk over positions.

A causal LM's loss usually goes `logits = head(h)` for every position, then an fp32 copy, then the
softmax gradient of that copy: for a 49k-token vocabulary and a 4 x 256 batch that is ~200 MB per
tensor, more than everything else a LoRA step keeps alive. Here only the labelled positions are
scored, a chunk of them at a time, and each chunk's gradient (softmax - one-hot, pushed through the
head) is computed in the same pass as its loss: nothing of size V outlives its chunk, and the head's
matmul runs once forward and once per needed gradient, with no recomputation in backward.

The maths is `F.cross_entropy(h @ W.T, targets, reduction="sum")`: logits in the head's compute
dtype (bf16 under autocast, as an HF model computes them), then fp32 for log-sum-exp and softmax.
That fp32 part runs over a few rows at a time (SOFTMAX_ROWS: ~6 MB for a 49k vocabulary, in cache) and
writes each row's gradient over its logits: with whole-chunk tensor ops, the five or six passes over a
(chunk, V) fp32 tensor in memory cost as much as the head's two matmuls (measured on a 2-core CPU: 61 ms
per 170-position chunk of a 49k vocabulary against 37 ms in row blocks, of which 27 ms are the matmuls).
"""

from __future__ import annotations

import math

import torch

from llmkit.train.bf16_matmul import emulated, linear

IGNORE = -100
# Logits per chunk: 12M (24 MB in bf16), ~256 positions of a 49k vocabulary: the head's matmuls run near their
# peak from ~256 rows (fewer: 660 against 780 GFLOP/s at 128) and slow down again when the output outgrows the cache.
CHUNK_LOGITS = 12 << 20
SOFTMAX_ROWS = 32  # rows of a chunk taken through the fp32 softmax at once (32 x 49k x 4 bytes = 6 MB)
HEAD_BLOCK = 8192  # head rows upcast at once where bf16 is emulated (8k x 576 x 4 bytes = 19 MB)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                want_hidden: bool, want_weight: bool, emulate_bf16: bool) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        # bf16 operands on a CPU without bf16 instructions: fp32 GEMMs of their values (see bf16_matmul), the head
        # upcast a block of its rows at a time (a whole fp32 copy of a 49k x 576 head is 113 MB, the largest transient
        # of a LoRA step). The logits stay in fp32 holding bf16 values (rounded row block by row block, as is their
        # gradient): no bf16 copy of them beside the fp32 one, and no fp32 copy again for the gradient's GEMM.
        rounding = hidden.dtype if emulate_bf16 else None

        want_any = grad_hidden is not None or grad_weight is not None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start: start + chunk], targets[start: start + chunk]
            logits = _emulated_logits(h, weight) if emulate_bf16 else h @ weight.T  # (n, V): the only vocabulary-sized tensor
            total += _softmax_rows(logits, t, want_any, rounding)  # logits now hold d loss / d logits
            if grad_hidden is not None:
                grad_hidden[start: start + chunk] = _emulated_grad(logits, weight) if emulate_bf16 else logits @ weight
            if grad_weight is not None:
                grad_weight += (logits.T @ h.float()) if emulate_bf16 else (logits.T @ h).float()
            del logits
        ctx.save_for_backward(*(x for x in (grad_hidden, grad_weight) if x is not None))
        ctx.wants = (want_hidden, want_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        saved = list(ctx.saved_tensors)
        want_hidden, want_weight = ctx.wants
        grad_hidden = grad_weight = None
        if want_hidden:
            grad_hidden = saved.pop(0)
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if want_weight:
            grad_weight = (saved.pop(0) * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _emulated_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h @ weight.T in fp32 from bf16 operands, HEAD_BLOCK rows of the head upcast at a time."""
    h32, out = h.float(), torch.empty(h.shape[0], weight.shape[0], dtype=torch.float32, device=h.device)
    for j in range(0, weight.shape[0], HEAD_BLOCK):
        torch.mm(h32, weight[j: j + HEAD_BLOCK].float().T, out=out[:, j: j + HEAD_BLOCK])
    return out


def _emulated_grad(grad_logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_logits (fp32 holding bf16 values) @ weight (bf16) as fp32 GEMMs, HEAD_BLOCK rows of the head upcast at a time."""
    out = None
    for j in range(0, weight.shape[0], HEAD_BLOCK):
        part = grad_logits[:, j: j + HEAD_BLOCK]
        w = weight[j: j + HEAD_BLOCK].float()
        out = part @ w if out is None else out.addmm_(part, w)
    return out


def _softmax_rows(logits: torch.Tensor, targets: torch.Tensor, gradient: bool,
                  rounding: torch.dtype | None = None) -> torch.Tensor:
    """Summed cross-entropy of `logits` (n, V) against `targets` (n,), in fp32, SOFTMAX_ROWS rows at a time;
    with `gradient`, each row is overwritten by its gradient, softmax - one-hot, in the logits' dtype. `rounding`:
    fp32 logits that stand for values of that dtype, rounded to it first, as is their gradient after."""
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    fp32 = logits.dtype == torch.float32
    scratch = None if fp32 else torch.empty(min(SOFTMAX_ROWS, len(logits)), logits.shape[1],
                                            dtype=torch.float32, device=logits.device)
    for start in range(0, len(logits), SOFTMAX_ROWS):
        rows, t = logits[start: start + SOFTMAX_ROWS], targets[start: start + SOFTMAX_ROWS, None]
        x = rows if fp32 else scratch[: len(rows)].copy_(rows)
        if rounding is not None:
            x.copy_(x.to(rounding))
        target_logit = x.gather(1, t)
        peak = x.amax(dim=-1, keepdim=True)
        mass = x.sub_(peak).exp_().sum(dim=-1, keepdim=True)   # x: exp(logit - max)
        total += (peak + mass.log() - target_logit).sum()      # log-sum-exp - target logit
        if gradient:
            x.div_(mass).scatter_add_(1, t, torch.full_like(target_logit, -1.0))
            if not fp32:
                rows.copy_(x)
            elif rounding is not None:
                x.copy_(x.to(rounding))
    return total


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` (hidden (N, C), weight (V, C)) against `targets` (N,),
    rows whose target is IGNORE left out. `chunk`: positions per chunk (0: CHUNK_LOGITS logits per chunk)."""
    keep = targets != IGNORE
    if not bool(keep.all()):
        hidden, targets = hidden[keep], targets[keep]
    dtype = _compute_dtype(hidden)
    hidden, weight_c = hidden.to(dtype), weight.to(dtype)  # no-ops for a bf16 head under bf16 autocast
    chunk = chunk or max(1, CHUNK_LOGITS // weight.shape[0])
    parts = max(1, math.ceil(len(targets) / chunk))
    chunk = max(1, math.ceil(len(targets) / parts))  # equal chunks: no small GEMM for a remainder
    grad, emulate = torch.is_grad_enabled(), dtype == torch.bfloat16 and emulated(hidden, weight_c)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight_c, targets, chunk, grad and hidden.requires_grad,
                                         grad and weight_c.requires_grad, emulate)


def shifted_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 0) -> tuple[torch.Tensor, int]:
    """Next-token loss summed over labelled positions of a batch, and their count: hidden (B, T, C) are the
    final states, position t predicts labels[t + 1]."""
    target = labels[:, 1:].reshape(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return linear_cross_entropy(states, weight, target, chunk), int((target != IGNORE).sum())


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """(N,) log p(targets[n]) under `hidden @ weight.T` (hidden (N, C), weight (V, C)), differentiable, per position.

    What a policy-gradient loss needs (each token weighed by its own advantage and KL term). Each chunk's
    logits are recomputed in backward (activation checkpointing) instead of kept: only (chunk, V) lives at once.
    """
    from torch.utils.checkpoint import checkpoint

    chunk = chunk or max(1, CHUNK_LOGITS // weight.shape[0])

    def logps(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = linear(h, weight).float()                     # (n, V), in autocast's arithmetic when on
        return logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)

    parts = [checkpoint(logps, hidden[s: s + chunk], targets[s: s + chunk], use_reentrant=False)
             if torch.is_grad_enabled() else logps(hidden[s: s + chunk], targets[s: s + chunk])
             for s in range(0, hidden.shape[0], chunk)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
