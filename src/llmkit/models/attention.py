"""Attention for bf16 training on a CPU at short sequence lengths: blocks of score matrices through batched GEMMs.

Why not always `F.scaled_dot_product_attention`: PyTorch's CPU flash kernel works in tiles with a per-tile
softmax, which pays at long sequences, but at the lengths llmkit trains on (a few hundred tokens) it does a
fraction of what the same CPU's bf16 GEMMs do. For smollm2-135m's attention (batch 4 x 256 tokens, 9 query
and 3 key/value heads of 64, 2 cores of an AVX512-BF16 EPYC): flash 12.8 ms forward + backward per layer,
this 5.2 ms, a whole LoRA step 1.46 s against 1.23 s (`bench/attention.py`; docs/benchmarks.md). Used only where it
pays: bf16 compute on a CPU with native bf16 GEMMs (elsewhere PyTorch's bf16 GEMMs are emulated and slow,
and in fp32 its fp32-out softmax is 4x its bf16-out one here), without dropout, and up to MAX_SCORES score
elements. bf16 compute on a CPU without bf16 instructions runs PyTorch's flash kernel with its backward in
fp32 on the bf16 values (`_Fp32Flash`: its bf16 backward is 3-4x slower there); everything else is PyTorch's
kernel. With or without gradients alike: a policy and its frozen reference (GRPO, DPO) must give the same
log-probabilities for the same weights.

The arithmetic is flash attention's, tiled only by query blocks: scores from a GEMM that accumulates in fp32,
a softmax that accumulates in fp32 and writes bf16 probabilities, and a backward that recomputes them instead
of keeping a (B, heads, T, T) matrix per layer alive until backward (the memory flash saves). Causal
attention runs in blocks of query times, each over the keys up to its end, so most of the masked half of the
score matrix is never computed. Grouped-query attention stacks each key/value head's query heads along the
rows, so one GEMM per key/value head serves its group, and the key/value gradients come out summed over it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.models.cpu_features import cpu_has_fast_bf16

# Above this many score elements (batch x query heads x T x T) a layer's transient score matrices would
# cost more memory than tiles do: flash attention instead. 2^24 is 4 x 9 heads x 682 tokens; 64 MiB of bf16.
MAX_SCORES = 1 << 24
# Causal attention in blocks of this many query times, block [a, b) over keys [0, b): of the scores above the
# diagonal that a whole matrix would compute and mask, all but a 1 / (2 x blocks) share are skipped. Smaller
# blocks skip more but make smaller GEMMs; in LoRA steps of smollm2-135m, 1,024 tokens a row: 8 blocks 14 % faster
# than one whole matrix; 256 tokens a row: 2 blocks 1-2 % (alternating steps of one process).
CAUSAL_BLOCK = 128


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:
    """Causal attention. q (B, H, T, D), k and v (B, KV, T, D) with H a multiple of KV (grouped-query attention:
    query head h reads key/value head h // (H // KV)); mask None for causal attention, else (B, 1, T, T) booleans
    (True: may attend). Returns (B, H, T, D) in the compute dtype (autocast's when it is on)."""
    B, H, T, D = q.shape
    KV = k.shape[1]
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else v.dtype
    ours = q.device.type == "cpu" and dtype == torch.bfloat16 and dropout == 0
    if ours and not cpu_has_fast_bf16():
        return _Fp32Flash.apply(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    if not ours or B * H * T * T > MAX_SCORES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=KV != H,
                                              dropout_p=dropout)
    G = H // KV
    # one bias per block of query times [a, b), over keys [0, b): (G*(b-a), b) for causal rows, one per batch
    # row and key/value head, (B*KV, G*(b-a), b), for packed rows (causal within each document)
    biases = _causal_biases(T, G, dtype, q.device) if mask is None else _document_biases(mask, KV, G, dtype)
    q3 = q.to(dtype).reshape(B * KV, G * T, D)  # query heads of one key/value head stacked along the rows
    k3, v3 = k.to(dtype).reshape(B * KV, T, D), v.to(dtype).reshape(B * KV, T, D)
    return _Attention.apply(q3, k3, v3, D ** -0.5, G, biases).view(B, H, T, D)


_BIASES: dict[tuple, list[torch.Tensor]] = {}


def _causal_biases(T: int, G: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    if torch.compiler.is_compiling():  # built in the graph: a guard on the cache would recompile once it fills
        return _causal_biases_of(T, G, dtype, device)
    key = (T, G, dtype, device, CAUSAL_BLOCK)
    if key not in _BIASES:
        _BIASES[key] = _causal_biases_of(T, G, dtype, device)
    return _BIASES[key]


def _causal_biases_of(T: int, G: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    bias = torch.zeros(T, T, dtype=dtype, device=device).masked_fill_(~causal, float("-inf"))
    bounds = _bounds(T)
    return [bias[a:b, :b].repeat(G, 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# (mask, KV, G, dtype, CAUSAL_BLOCK, biases) of the last eager call: every layer of one forward passes the same mask tensor.
# One tuple, read and replaced whole, so a thread never pairs another thread's mask with its biases.
_last_biases: tuple | None = None


def _document_biases(mask: torch.Tensor, KV: int, G: int, dtype: torch.dtype) -> list[torch.Tensor]:
    global _last_biases
    if torch.compiler.is_compiling():  # no cache in a graph: a guard on it would recompile for every new mask
        return _document_biases_of(mask, KV, G, dtype)
    last = _last_biases
    if last is not None and last[0] is mask and last[1:5] == (KV, G, dtype, CAUSAL_BLOCK):
        return last[5]
    biases = _document_biases_of(mask, KV, G, dtype)
    _last_biases = (mask, KV, G, dtype, CAUSAL_BLOCK, biases)
    return biases


def _document_biases_of(mask: torch.Tensor, KV: int, G: int, dtype: torch.dtype) -> list[torch.Tensor]:
    B, _, T, _ = mask.shape
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))  # (B, 1, T, T)
    bounds = _bounds(T)
    return [bias[:, :, None, a:b, :b].expand(B, KV, G, b - a, b).reshape(B * KV, G * (b - a), b)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _Fp32Flash(torch.autograd.Function):
    """bf16 attention on a CPU without bf16 instructions: PyTorch's CPU flash kernel, forward in bf16 (what
    `F.scaled_dot_product_attention` runs, bit for bit) and backward in fp32 on the bf16 values, gradients rounded to
    bf16. Its bf16 backward is slow there: smollm2-135m's attention (batch 4 x 256 tokens, 9 query and 3 key/value
    heads of 64) on a 2-core Xeon with AVX512 but no bf16 took 30 ms backward per layer in bf16, 8.9 ms in fp32 (the
    forward: 4.0 and 3.9 ms, so it stays bf16 and makes no fp32 copies while a forward's activations pile up). Keeps
    what the bf16 kernel keeps (q, k, v, output, log-sum-exp); `mask` (B, 1, T, T) booleans, or None for causal
    attention, becomes the additive mask the kernel takes, in the dtype of its inputs."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        with torch.autocast("cpu", enabled=False):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, mask is None, attn_mask=_additive(mask, q.dtype))
        ctx.save_for_backward(q, k, v, out, lse, mask)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, mask = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                do.to(q.dtype).float(), q.float(), k.float(), v.float(), out.float(), lse, 0.0, mask is None,
                attn_mask=_additive(mask, torch.float32))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if mask is None else torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


class _Attention(torch.autograd.Function):
    """q (N, R, D) with R = G x T query rows (G query heads per key/value head), k and v (N, T, D), all bf16;
    `biases`, one per block of query times of CAUSAL_BLOCK, each block over the keys up to its last time only:
    the scores above the diagonal are mostly never computed."""

    @staticmethod
    def forward(ctx, q, k, v, scale, G, biases):
        with torch.autocast("cpu", enabled=False):
            parts = [torch.bmm(_probabilities(qb, kb, bb, scale), vb) for qb, kb, vb, bb in _blocks(q, k, v, G, biases)]
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.G, ctx.biases = scale, G, biases
        return _join_rows(parts, G)

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        # the blocks' key and value gradients summed in fp32: a bf16 sum would round once more
        dq, dk, dv = [], torch.zeros_like(k, dtype=torch.float32), torch.zeros_like(v, dtype=torch.float32)
        with torch.autocast("cpu", enabled=False):
            dos = _split_rows(do.to(v.dtype), ctx.G, k.shape[1])
            for (qb, kb, vb, bb), dob in zip(_blocks(q, k, v, ctx.G, ctx.biases), dos, strict=True):
                p = _probabilities(qb, kb, bb, ctx.scale)                      # recomputed: (N, rows, keys)
                keys = kb.shape[1]
                dv[:, :keys] += torch.bmm(p.transpose(1, 2), dob).float()       # (N, keys, D)
                dp = torch.bmm(dob, vb.transpose(1, 2))                          # (N, rows, keys)
                # p * (dp - rowsum(dp * p)), accumulated in fp32 inside the kernel
                ds = torch._softmax_backward_data(dp, p, -1, p.dtype).mul_(ctx.scale)
                dq.append(torch.bmm(ds, kb))                                     # (N, rows, D)
                dk[:, :keys] += torch.bmm(ds.transpose(1, 2), qb).float()       # summed over the group
        return _join_rows(dq, ctx.G), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def _blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, G: int, biases: list[torch.Tensor]) -> list[tuple]:
    """(query rows, keys, values, bias) per block of query times: block [a, b) attends to keys [0, b)."""
    T = k.shape[1]
    return [(rows, k[:, :b], v[:, :b], bias)
            for rows, b, bias in zip(_split_rows(q, G, T), _bounds(T)[1:], biases, strict=True)]


def _bounds(T: int) -> list[int]:
    n = max(1, T // CAUSAL_BLOCK)
    return [T * i // n for i in range(n + 1)]


def _split_rows(x: torch.Tensor, G: int, T: int) -> list[torch.Tensor]:
    """(N, G*T, D) -> one (N, G*(b-a), D) per block [a, b) of query times."""
    N, _, D = x.shape
    bounds, x4 = _bounds(T), x.view(N, G, T, D)
    if len(bounds) == 2:
        return [x]
    return [x4[:, :, a:b].reshape(N, G * (b - a), D) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _join_rows(parts: list[torch.Tensor], G: int) -> torch.Tensor:
    """The inverse of _split_rows."""
    if len(parts) == 1:
        return parts[0]
    N, _, D = parts[0].shape
    return torch.cat([p.view(N, G, -1, D) for p in parts], dim=2).view(N, -1, D)


def _probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    # The softmax accumulates in fp32 and writes bf16, which the next GEMM reads: PyTorch's bf16-out softmax
    # runs 4x faster here than its fp32-out one, and the backward recomputes this rather than keep it.
    s = torch.bmm(q, k.transpose(1, 2)).mul_(scale).add_(bias)                   # (N, R, T), in place: one allocation
    return torch.softmax(s, dim=-1)
