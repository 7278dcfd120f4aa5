"""A lean decode forward for Llama-family Hugging Face models, over a preallocated per-sequence KV cache.

Why not just call the HF module: for the small models llmkit trains, HF's forward spends about as
long in per-token Python (cache objects, mask building, output dataclasses, hooks) as in arithmetic,
and nn.Linear's (out, in) weight layout takes a slow MKL gemv path on CPU for one-row inputs. Here
the weights of a Llama, Mistral, Qwen2 or Qwen3 model are read once into a decode layout
(`runtime.llama_layout`: q/k/v and gate/up fused, transposed, split per thread, RMSNorm weights and
the attention scale folded in; quantized layers on PyTorch's int8/int4 CPU kernels), RoPE
with its scaling comes from transformers' own functions (`models.rope`), and a token costs a flat
run of about twenty cheap torch ops per layer.

The core is shaped for continuous batching: `prefill()` turns a prompt into a `LlamaState` (one
sequence's KV cache), and `step()` advances any list of states by one token each, so a serving
engine can add and drop sequences between steps. Projections and MLP run batched; attention runs
per sequence, since every sequence has its own length and cache.

Exactness: the arithmetic is HF's up to float rounding order (logits agree to ~1e-6 in fp32);
the tests hold greedy output token-for-token equal to `model.generate()`. Quantized layers compute
what `QuantLinear`'s own forward computes (the same kernels; bf16 activations inside them). Inference semantics
only (no dropout). Costs one extra copy of the weights, in the decode layout, while it is alive.
"""

from __future__ import annotations

import functools
import math
import mmap
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmkit.models import native_kernel
from llmkit.models.rope import rope_parameters, rope_rotations
from llmkit.runtime.llama_layout import (
    LayoutBuilder,
    QuantMatmul,
    decode_unsupported_reason,
    unsupported_reason,
)
from llmkit.runtime.lora_rows import AdapterSet, add_delta

__all__ = ["FastLlama", "LlamaState", "decode_unsupported_reason", "rope_parameters", "unsupported_reason"]


@dataclass
class LlamaState:
    """One sequence's KV cache: the first `length` positions of `kv` are filled."""

    kv: torch.Tensor  # (n_layer, 2, n_kv_head, capacity, head_dim); k in FastLlama's RoPE pair order
    length: int = 0
    pool: torch.Tensor | None = None  # set when kv is slot `slot` of a shared pool (see new_pool)
    slot: int = -1
    restored: int = 0  # prompt tokens copied from the prefix cache rather than computed
    adapter: int = 0  # the LoRA adapter (an id in FastLlama.adapters) this sequence decodes with; 0 = the base

    @property
    def capacity(self) -> int:
        return self.kv.shape[3]


def _own_arithmetic(method):
    """inference_mode, with autocast off: FastLlama computes in its own dtype (its weights', its KV cache's) whatever
    context calls it. GRPO samples inside the training step's bf16 autocast, where its products came out bf16 and
    the in-place LoRA adds of fp32 adapter weights failed (and the KV cache would have held autocast's rounding)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return call


class FastLlama:
    def __init__(self, model):
        reason = decode_unsupported_reason(model)
        if reason:
            raise ValueError(f"FastLlama can't run this model: {reason}")
        cfg = model.config
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_rep = self.n_head // self.n_kv
        self.eps = cfg.rms_norm_eps
        self.max_len = cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        self.intermediate = cfg.intermediate_size
        emb = model.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype
        self.embed = emb.detach()
        # Float weights are split into column blocks, one per torch thread (see LayoutBuilder.float_matmul).
        threads = torch.get_num_threads()
        widths = ((self.n_head + 2 * self.n_kv) * self.head_dim, cfg.hidden_size, 2 * cfg.intermediate_size)
        self.splits = max(d for d in range(1, threads + 1) if all(w % d == 0 for w in widths))
        layout = LayoutBuilder(model, self.splits)
        self.layers = [layout.layer(layer) for layer in model.model.layers]
        self.lm_head_t = layout.head(model)
        self.rot = rope_rotations(cfg, self.head_dim, self.max_len).to(self.device)
        self.eps_t = torch.tensor(self.eps, dtype=torch.float32, device=self.device)
        # LoRA adapters served on this base, each row adding its own (runtime.lora_rows); swapped whole, so a
        # step that has read it keeps a consistent set while adapters are loaded or unloaded.
        self.adapters = AdapterSet()
        # One sequence's attention on llmkit's kernel, on the calling thread (SDPA's thread split costs more than
        # the arithmetic at batch 1: 53 against ~12 µs per layer on SmolLM2-135M, 2 threads).
        self.attend_one = (native_kernel.available() and self.dtype == torch.float32 and self.device.type == "cpu"
                           and self.head_dim % 8 == 0)

    # --- cache ---------------------------------------------------------------------------------

    def new_state(self, capacity: int) -> LlamaState:
        capacity = max(1, min(capacity, self.max_len))
        shape = (len(self.layers), 2, self.n_kv, capacity, self.head_dim)
        return LlamaState(torch.empty(shape, dtype=self.dtype, device=self.device))

    def new_pool(self, slots: int, capacity: int | None = None) -> torch.Tensor:
        """One KV tensor for `slots` sequences, so step() can attend for all of them in one call.

        (n_layer, 2, slots, n_kv_head, capacity, head_dim); `pool_state(pool, slot)` is a state whose
        kv is a view of one slot. A serving engine keeps its running batch in low slots.
        """
        capacity = min(capacity or self.max_len, self.max_len)
        shape = (len(self.layers), 2, slots, self.n_kv, capacity, self.head_dim)
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Zeros that take memory only where written: anonymous pages are zero until first touched, and a
        # sequence writes the first `length` positions of each (layer, k/v, slot, head) run, so a pool sized for
        # every slot at full context costs what its sequences hold (torch.zeros would touch it all at once).
        # Zeros, not torch.empty: a batch's attention reads masked positions too, and stale NaN bits would
        # survive an additive mask.
        pages = mmap.mmap(-1, math.prod(shape) * self.dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return torch.frombuffer(pages, dtype=self.dtype).view(shape)  # the tensor keeps `pages` alive

    @staticmethod
    def pool_state(pool: torch.Tensor, slot: int) -> LlamaState:
        return LlamaState(pool[:, :, slot], 0, pool, slot)

    def _reserve(self, state: LlamaState, needed: int) -> None:
        if needed > self.max_len:
            raise ValueError(f"sequence of {needed} tokens exceeds the model's context of {self.max_len}")
        if needed > state.capacity and state.pool is not None:
            raise ValueError(f"sequence of {needed} tokens exceeds its pool slot of {state.capacity}")
        if needed > state.capacity:
            # Doubling keeps regrowth rare when callers under-reserve.
            bigger = self.new_state(max(needed, 2 * state.capacity)).kv
            bigger[..., :state.length, :] = state.kv[..., :state.length, :]
            state.kv = bigger

    # --- forward -------------------------------------------------------------------------------

    def _mm(self, x, w, residual=None):
        """x @ w (+ residual) for w from the layout: (N, in) -> (N, out)."""
        if isinstance(w, QuantMatmul):
            return w(x) if residual is None else w.with_residual(x, residual)
        if w.dim() == 2:
            return torch.mm(x, w) if residual is None else torch.addmm(residual, x, w)
        p, n = w.shape[0], x.shape[0]
        xs = x.expand(p, n, x.shape[1])  # (splits, N, in), no copy
        if residual is None:
            y = torch.bmm(xs, w)  # (splits, N, out / splits)
        elif n == 1:
            y = torch.baddbmm(residual.view(p, 1, -1), xs, w)
        else:
            y = torch.baddbmm(residual.view(n, p, -1).transpose(0, 1), xs, w)
        return y.view(1, -1) if n == 1 else y.transpose(0, 1).reshape(n, -1)  # (N, out)

    def _norm(self, x):
        # RMSNorm without its weight (folded into the next matmul), in fp32 like HF. HF's
        # mean(x^2) + eps as eps + |x|^2 / C: two fused kernels instead of pow, mean and add.
        xf = x if x.dtype == torch.float32 else x.float()
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # (N, 1)
        y = xf * torch.addcmul(self.eps_t, norm, norm, value=1 / x.shape[-1]).rsqrt_()
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _lora(self, rows: list[int]):
        """(the adapter weights per layer, the rows' masks) when a row uses an adapter, else None."""
        adapters = self.adapters
        masks = adapters.masks(rows, self.dtype, self.device) if adapters.adapters else None
        return None if masks is None else (adapters.weights, masks)

    def _qkv(self, x, lw, rot, lora=None):
        """Fused q/k/v projection with RoPE applied in place: (N, C) -> (N, (nh + 2 * nkv) * hd).
        `lora`: (this layer's adapter weights, masks), each row adding its own adapter's delta."""
        w_qkv, b_qkv = lw[:2]
        if lora is None and isinstance(w_qkv, QuantMatmul):
            qkv = w_qkv.normed(x, self.eps, self._norm)
        else:
            h = self._norm(x)
            qkv = self._mm(h, w_qkv)
        if lora is not None:
            add_delta(qkv, h, lora[0]["qkv"], lora[1]["qkv"])
        if b_qkv is not None:
            qkv += b_qkv
        n, split = x.shape[0], (self.n_head + self.n_kv) * self.head_dim
        if lw[8] is not None:  # Qwen3's per-head RMSNorm on q and k, its weight times q's attention scale
            heads = qkv[:, :split].view(n, self.n_head + self.n_kv, self.head_dim)
            heads.copy_(self._norm(heads) * lw[8])
        qk = qkv[:, :split].view(n, self.n_head + self.n_kv, self.head_dim // 2, 2)
        if qkv.dtype == torch.float32:
            torch.view_as_complex(qk).mul_(rot)  # rot (N, 1, hd / 2) broadcasts over heads
        else:
            qk.copy_(torch.view_as_real(torch.view_as_complex(qk.float()) * rot))
        return qkv

    def _finish_layer(self, x, y, lw, lora=None):
        # Attention output projection and the MLP, each with its residual add fused into the matmul.
        w_o, b_o, w_gu, b_gu, w_down, b_down = lw[2:8]
        x = self._mm(y, w_o, residual=x)  # (N, C)
        if lora is not None:
            add_delta(x, y, lora[0]["o"], lora[1]["o"])
        if b_o is not None:
            x = x + b_o
        if lora is None and isinstance(w_gu, QuantMatmul):
            gu = w_gu.normed(x, self.eps, self._norm)  # (N, 2I)
        else:
            h = self._norm(x)
            gu = self._mm(h, w_gu)  # (N, 2I)
        if lora is not None:
            add_delta(gu, h, lora[0]["gu"], lora[1]["gu"])
        if b_gu is not None:
            gu += b_gu
        inter = self.intermediate
        act = F.silu(gu[:, :inter]) * gu[:, inter:]
        x = self._mm(act, w_down, residual=x)  # (N, C)
        if lora is not None:
            add_delta(x, act, lora[0]["down"], lora[1]["down"])
        return x if b_down is None else x + b_down

    def _logits(self, x):
        if isinstance(self.lm_head_t, QuantMatmul):  # int8: normalised as the kernel quantizes x
            return self.lm_head_t.normed(x, self.eps, self._norm)[:, :self.vocab_size]
        return self._mm(self._norm(x), self.lm_head_t)[:, :self.vocab_size]  # (N, vocab)

    @_own_arithmetic
    def prefill(self, ids: list[int], state: LlamaState | None = None, capacity: int | None = None):
        """Run `ids` through the model, appending to `state` (a new one if None).

        Returns (state, logits for the next token (vocab,)). Passing an existing state extends it,
        which is how a caller can prefill a long prompt in chunks. `capacity` sizes a new cache
        (prompt + expected new tokens); it grows by doubling if that was too small.
        """
        t = len(ids)
        if state is None:
            state = self.new_state(capacity or t)
        start, end = state.length, state.length + t
        self._reserve(state, end)
        nh, nkv, hd, nq = self.n_head, self.n_kv, self.head_dim, self.n_head * self.head_dim
        x = self.embed[torch.tensor(ids, device=self.device)]  # (T, C)
        rot = self.rot[start:end, None]  # (T, 1, hd / 2)
        lora = self._lora([state.adapter] * t)
        mask = None
        if start:
            # Query i sits at position start + i and may see every cached position up to it.
            mask = torch.ones(t, end, dtype=torch.bool, device=self.device).tril(start)
        for i, lw in enumerate(self.layers):
            li = None if lora is None else (lora[0][i], lora[1])  # this layer's adapter weights, the rows' masks
            qkv = self._qkv(x, lw, rot, li)
            new_kv = qkv[:, nq:].view(t, 2, nkv, hd).permute(1, 2, 0, 3)  # (2, nkv, T, hd)
            state.kv[i, :, :, start:end] = new_kv
            q = qkv[:, :nq].view(t, nh, hd).transpose(0, 1)  # (nh, T, hd), already scaled
            k, v = state.kv[i, 0, :, :end], state.kv[i, 1, :, :end]  # (nkv, end, hd)
            if self.n_rep > 1:
                k, v = k.repeat_interleave(self.n_rep, 0), v.repeat_interleave(self.n_rep, 0)  # (nh, end, hd)
            y = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask,
                                               is_causal=mask is None, scale=1.0)  # (1, nh, T, hd)
            x = self._finish_layer(x, y[0].transpose(0, 1).reshape(t, nq), lw, li)
        state.length = end
        return state, self._logits(x[-1:])[0]

    @_own_arithmetic
    def prefill_many(self, prompts: list[list[int]], states: list[LlamaState]) -> torch.Tensor:
        """prefill() for several sequences at once: their tokens go through each layer's matmuls together
        (larger, more efficient products), attention stays per sequence. A state may already hold a prefix
        (a prompt's start restored from the prefix cache): its tokens follow it. Returns (B, vocab)."""
        lengths = [len(ids) for ids in prompts]
        starts = [state.length for state in states]
        for state, start, n in zip(states, starts, lengths, strict=True):
            self._reserve(state, start + n)
        nh, nkv, hd, nq = self.n_head, self.n_kv, self.head_dim, self.n_head * self.head_dim
        flat = [t for ids in prompts for t in ids]
        x = self.embed[torch.tensor(flat, device=self.device)]  # (sum T, C)
        rot = torch.cat([self.rot[s:s + n] for s, n in zip(starts, lengths, strict=True)])[:, None]  # (sum T, 1, hd / 2)
        bounds = [0]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        lora = self._lora([state.adapter for state, n in zip(states, lengths, strict=True) for _ in range(n)])
        # Query i of a sequence with a prefix sits at position start + i and sees every position up to it.
        masks = [torch.ones(n, s + n, dtype=torch.bool, device=self.device).tril(s) if s else None
                 for s, n in zip(starts, lengths, strict=True)]
        for i, lw in enumerate(self.layers):
            li = None if lora is None else (lora[0][i], lora[1])  # this layer's adapter weights, the rows' masks
            qkv = self._qkv(x, lw, rot, li)  # (sum T, (nh + 2 * nkv) * hd)
            ys = []
            for state, s, mask, a, b in zip(states, starts, masks, bounds, bounds[1:], strict=False):
                t = b - a
                state.kv[i, :, :, s:s + t] = qkv[a:b, nq:].view(t, 2, nkv, hd).permute(1, 2, 0, 3)  # (2, nkv, T, hd)
                q = qkv[a:b, :nq].view(t, nh, hd).transpose(0, 1)  # (nh, T, hd)
                k, v = state.kv[i, 0, :, :s + t], state.kv[i, 1, :, :s + t]
                if self.n_rep > 1:
                    k, v = k.repeat_interleave(self.n_rep, 0), v.repeat_interleave(self.n_rep, 0)
                y = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, is_causal=mask is None,
                                                   scale=1.0)
                ys.append(y[0].transpose(0, 1).reshape(t, nq))
            x = self._finish_layer(x, torch.cat(ys), lw, li)
        for state, s, n in zip(states, starts, lengths, strict=True):
            state.length = s + n
        return self._logits(x[torch.tensor(bounds[1:], device=self.device) - 1])  # (B, vocab)

    @_own_arithmetic
    def step(self, states: list[LlamaState], token_ids: list[int]) -> torch.Tensor:
        """Append token_ids[b] to states[b] for every b; return next-token logits (B, vocab)."""
        for s in states:
            self._reserve(s, s.length + 1)
        pool = states[0].pool
        # One sequence attends over its own slot's view without the batch's mask and scatter: a fifth faster
        # per token (one client of a server), the same arithmetic.
        if len(states) > 1 and pool is not None and all(s.pool is pool for s in states):
            return self._step_pooled(states, token_ids, pool)
        b = len(states)
        nkv, hd, n_rep, nq = self.n_kv, self.head_dim, self.n_rep, self.n_head * self.head_dim
        x = self.embed[torch.tensor(token_ids, device=self.device)]  # (B, C)
        rot = self.rot[torch.tensor([s.length for s in states], device=self.device), None]  # (B, 1, hd / 2)
        lora = self._lora([s.adapter for s in states])
        # Views made once per step rather than per layer: the cache slot for the new token, and
        # K/V up to and including it.
        seqs = []
        for s in states:
            live = s.kv[:, :, None, :, :s.length + 1]  # (L, 2, 1, nkv, n + 1, hd)
            slot = s.kv.select(3, s.length)  # (L, 2, nkv, hd)
            seqs.append((slot, live[:, 0], live[:, 1]))  # K and V: (L, 1, nkv, n + 1, hd)
        for i, lw in enumerate(self.layers):
            li = None if lora is None else (lora[0][i], lora[1])  # this layer's adapter weights, the rows' masks
            qkv = self._qkv(x, lw, rot, li)  # (B, (nh + 2 * nkv) * hd)
            ys = []
            for j, (slot, k, v) in enumerate(seqs):
                row = qkv[j]
                slot[i].copy_(row[nq:].view(2, nkv, hd))
                # A single query attends to every cached position, so no mask; grouping the query
                # heads by the kv head they share avoids materialising repeated K/V for GQA. 4-D
                # inputs: SDPA takes a much slower generic path for 3-D ones on CPU.
                q = row[:nq].view(1, nkv, n_rep, hd)  # already scaled
                if self.attend_one and b == 1:
                    ys.append(native_kernel.attend_one(q[0], k[i][0], v[i][0]))  # (nkv, n_rep, hd)
                else:
                    ys.append(F.scaled_dot_product_attention(q, k[i], v[i], scale=1.0))  # (1, nkv, n_rep, hd)
            y = ys[0].view(1, nq) if b == 1 else torch.cat(ys).view(b, nq)  # (B, nh * hd)
            x = self._finish_layer(x, y, lw, li)
        for s in states:
            s.length += 1
        return self._logits(x)

    def _step_pooled(self, states: list[LlamaState], token_ids: list[int], pool: torch.Tensor) -> torch.Tensor:
        """step() for states in one pool: attention for the whole batch in one SDPA call per layer.

        Slots lo..hi-1 are attended together (a slot between them that no state uses attends to its
        position 0 and its output is dropped), each row masked to its own length, so the batch needs
        no copies of the caches and no per-sequence Python per layer.
        """
        b, nkv, hd, n_rep, nq = len(states), self.n_kv, self.head_dim, self.n_rep, self.n_head * self.head_dim
        slots = [s.slot for s in states]
        lo, hi = min(slots), max(slots) + 1
        n = hi - lo
        lengths = torch.tensor([s.length for s in states], device=self.device)
        rows = torch.tensor(slots, device=self.device) - lo  # (B,) row of each state within lo..hi
        span = int(lengths.max()) + 1
        visible = torch.ones(n, dtype=torch.long, device=self.device)
        visible[rows] = lengths + 1
        mask = (torch.arange(span, device=self.device)[None, :] < visible[:, None]).view(n, 1, 1, span)
        x = self.embed[torch.tensor(token_ids, device=self.device)]  # (B, C)
        rot = self.rot[lengths, None]  # (B, 1, hd / 2)
        slot_index = rows + lo
        # The usual case, states in slot order with no gaps: queries and outputs need no scatter/gather.
        dense = n == b and slots == list(range(lo, hi))
        q_all = None if dense else torch.zeros(n, nkv, n_rep, hd, dtype=x.dtype, device=self.device)
        lora = self._lora([s.adapter for s in states])
        for i, lw in enumerate(self.layers):
            li = None if lora is None else (lora[0][i], lora[1])  # this layer's adapter weights, the rows' masks
            qkv = self._qkv(x, lw, rot, li)  # (B, (nh + 2 * nkv) * hd)
            pool[i, :, slot_index, :, lengths] = qkv[:, nq:].view(b, 2, nkv, hd)  # k and v at once
            q = qkv[:, :nq].view(b, nkv, n_rep, hd)  # already scaled
            if not dense:
                q_all[rows] = q
            k, v = pool[i, 0, lo:hi, :, :span], pool[i, 1, lo:hi, :, :span]  # (n, nkv, span, hd), views
            y = F.scaled_dot_product_attention(q if dense else q_all, k, v, attn_mask=mask, scale=1.0)  # (n, nkv, n_rep, hd)
            x = self._finish_layer(x, (y if dense else y[rows]).reshape(b, nq), lw, li)
        for s in states:
            s.length += 1
        return self._logits(x)
