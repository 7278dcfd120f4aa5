"""A lean decode forward for Hugging Face Llama models, over a preallocated per-sequence KV cache.

Why not just call the HF module: for the small models llmkit trains, HF's forward spends more time
in per-token Python (cache objects, mask building, output dataclasses, hooks) than in arithmetic,
and nn.Linear's (out, in) weight layout takes a slow MKL gemv path on CPU for one-row inputs. Here
the weights of a `LlamaForCausalLM` are read once into a decode layout (q/k/v and gate/up fused,
transposed to (in, out)), and a token costs a flat run of ~25 torch ops per layer.

The core is shaped for continuous batching: `prefill()` turns a prompt into a `LlamaState` (one
sequence's KV cache), and `step()` advances any list of states by one token each, so a serving
engine can add and drop sequences between steps. Projections and MLP run batched; attention runs
per sequence, since every sequence has its own length and cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rope_parameters(config) -> dict:
    # transformers v5 keeps RoPE settings in rope_parameters; v4 in rope_theta + rope_scaling.
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def unsupported_reason(model) -> str | None:
    """Why `FastLlama` can't run `model` exactly, or None if it can."""
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        return f"{type(model).__name__} is not a LlamaForCausalLM"
    cfg = model.config
    if rope_parameters(cfg)["rope_type"] != "default":
        return f"rope_type '{rope_parameters(cfg)['rope_type']}' is not implemented"
    if cfg.hidden_act != "silu":
        return f"hidden_act '{cfg.hidden_act}' is not implemented"
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        return "num_attention_heads is not a multiple of num_key_value_heads"
    return None


@dataclass
class LlamaState:
    """One sequence's KV cache: `length` positions of `k`/`v` are filled."""

    k: torch.Tensor  # (n_layer, n_kv_head, capacity, head_dim)
    v: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


class FastLlama:
    def __init__(self, model):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"FastLlama can't run this model: {reason}")
        cfg = model.config
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_rep = self.n_head // self.n_kv
        self.eps = cfg.rms_norm_eps
        self.max_len = cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        emb = model.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype

        def t(w):
            # (out, in) -> (in, out) contiguous: mm(x, w_t) for a one-row x streams memory far
            # better than F.linear's gemv (measured ~1.4x on the micro preset).
            return w.detach().t().contiguous()

        def cat_bias(*linears):
            if all(lin.bias is None for lin in linears):
                return None
            return torch.cat([lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                              device=lin.weight.device) for lin in linears]).detach()

        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight.detach(),
                t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                cat_bias(a.q_proj, a.k_proj, a.v_proj),
                t(a.o_proj.weight),
                None if a.o_proj.bias is None else a.o_proj.bias.detach(),
                layer.post_attention_layernorm.weight.detach(),
                t(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                cat_bias(m.gate_proj, m.up_proj),
                t(m.down_proj.weight),
                None if m.down_proj.bias is None else m.down_proj.bias.detach(),
            ))
        self.embed = emb.detach()
        self.norm = model.model.norm.weight.detach()
        self.lm_head_t = t(model.get_output_embeddings().weight)
        self.intermediate = cfg.intermediate_size

        # RoPE tables computed exactly as HF does (fp32 positions * inv_freq, then cast), for every
        # position up front. rotate_half(x) = [-x2, x1] becomes roll(x) * sin with sin's first half
        # negated, one op instead of four.
        theta = rope_parameters(cfg)["rope_theta"]
        hd = self.head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        freqs = torch.arange(self.max_len).float()[:, None] * inv_freq[None, :]
        emb_f = torch.cat((freqs, freqs), dim=-1)  # (max_len, hs)
        sign = torch.cat((-torch.ones(hd // 2), torch.ones(hd // 2)))
        self.cos = emb_f.cos().to(self.device, self.dtype)
        self.sin = (emb_f.sin() * sign).to(self.device, self.dtype)

    # --- cache ---------------------------------------------------------------------------------

    def new_state(self, capacity: int) -> LlamaState:
        capacity = max(1, min(capacity, self.max_len))
        shape = (len(self.layers), self.n_kv, capacity, self.head_dim)
        return LlamaState(torch.empty(shape, dtype=self.dtype, device=self.device),
                          torch.empty(shape, dtype=self.dtype, device=self.device))

    def _reserve(self, state: LlamaState, needed: int) -> None:
        if needed > self.max_len:
            raise ValueError(f"sequence of {needed} tokens exceeds the model's context of {self.max_len}")
        if needed <= state.capacity:
            return
        # Doubling keeps regrowth rare when callers under-reserve.
        bigger = self.new_state(max(needed, 2 * state.capacity))
        bigger.k[:, :, :state.length] = state.k[:, :, :state.length]
        bigger.v[:, :, :state.length] = state.v[:, :, :state.length]
        state.k, state.v = bigger.k, bigger.v

    # --- forward -------------------------------------------------------------------------------

    def _rms(self, x, w):
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        # HF normalises in fp32 and casts back before the weight; match it for bf16/fp16.
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, x, cos, sin):
        # x (N, H, hs), cos/sin (N, 1, hs)
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, -1), sin)

    def _mlp_residual(self, x, lw):
        _, _, _, _, _, w_post, w_gu, b_gu, w_down, b_down = lw
        h = self._rms(x, w_post)
        gu = torch.mm(h, w_gu)  # (N, 2 * I)
        if b_gu is not None:
            gu += b_gu
        inter = self.intermediate
        x = torch.addmm(x, F.silu(gu[:, :inter]) * gu[:, inter:], w_down)  # (N, C)
        return x if b_down is None else x + b_down

    def _qkv(self, x, lw, cos, sin):
        w_in, w_qkv, b_qkv = lw[:3]
        n = x.shape[0]
        qkv = torch.mm(self._rms(x, w_in), w_qkv)  # (N, (nh + 2 * nkv) * hs)
        if b_qkv is not None:
            qkv += b_qkv
        split = (self.n_head + self.n_kv) * self.head_dim
        qk = self._rope(qkv[:, :split].view(n, self.n_head + self.n_kv, self.head_dim), cos, sin)  # (N, nh + nkv, hs)
        v = qkv[:, split:].view(n, self.n_kv, self.head_dim)  # (N, nkv, hs)
        return qk, v

    def _attn_out(self, x, y, lw):
        _, _, _, w_o, b_o = lw[:5]
        x = torch.addmm(x, y, w_o)  # (N, C)
        return x if b_o is None else x + b_o

    def _logits(self, x):
        return torch.mm(self._rms(x, self.norm), self.lm_head_t)  # (N, vocab)

    @torch.inference_mode()
    def prefill(self, ids: list[int], state: LlamaState | None = None, capacity: int | None = None):
        """Run `ids` through the model, appending to `state` (a new one if None).

        Returns (state, logits for the next token (vocab,)). Passing an existing state extends it,
        which is how a caller can prefill a long prompt in chunks.
        """
        t = len(ids)
        if state is None:
            state = self.new_state(capacity or t)
        start = state.length
        self._reserve(state, start + t)
        end = start + t
        nh, hd = self.n_head, self.head_dim
        x = self.embed[torch.tensor(ids, device=self.device)]  # (T, C)
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]  # (T, 1, hs)
        mask = None
        if start:
            # Query i sits at position start + i and may see every cached position up to it.
            mask = torch.ones(t, end, dtype=torch.bool, device=self.device).tril(start)
        for i, lw in enumerate(self.layers):
            qk, v = self._qkv(x, lw, cos, sin)
            state.k[i, :, start:end] = qk[:, nh:].transpose(0, 1)  # (nkv, T, hs)
            state.v[i, :, start:end] = v.transpose(0, 1)
            q = qk[:, :nh].transpose(0, 1)  # (nh, T, hs)
            k, vv = state.k[i, :, :end], state.v[i, :, :end]  # (nkv, end, hs)
            if self.n_rep > 1:
                k, vv = k.repeat_interleave(self.n_rep, 0), vv.repeat_interleave(self.n_rep, 0)  # (nh, end, hs)
            y = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask, is_causal=mask is None)  # (nh, T, hs)
            x = self._attn_out(x, y.transpose(0, 1).reshape(t, nh * hd), lw)
            x = self._mlp_residual(x, lw)
        state.length = end
        return state, self._logits(x[-1:])[0]

    @torch.inference_mode()
    def step(self, states: list[LlamaState], token_ids: list[int]) -> torch.Tensor:
        """Append token_ids[b] to states[b] for every b; return next-token logits (B, vocab)."""
        b = len(states)
        for s in states:
            self._reserve(s, s.length + 1)
        nh, nkv, hd, n_rep = self.n_head, self.n_kv, self.head_dim, self.n_rep
        x = self.embed[torch.tensor(token_ids, device=self.device)]  # (B, C)
        pos = torch.tensor([s.length for s in states], device=self.device)
        cos, sin = self.cos[pos, None], self.sin[pos, None]  # (B, 1, hs)
        for i, lw in enumerate(self.layers):
            qk, v = self._qkv(x, lw, cos, sin)
            ys = []
            for j, s in enumerate(states):
                n = s.length
                kc, vc = s.k[i], s.v[i]  # (nkv, cap, hs)
                kc[:, n] = qk[j, nh:]
                vc[:, n] = v[j]
                # A single query attends to every cached position, so no mask; grouping the query
                # heads by the kv head they share avoids materialising repeated K/V for GQA.
                q = qk[j, :nh].view(nkv, n_rep, hd)  # (nkv, n_rep, hs)
                ys.append(F.scaled_dot_product_attention(q, kc[:, :n + 1], vc[:, :n + 1]))  # (nkv, n_rep, hs)
            y = ys[0].view(1, nh * hd) if b == 1 else torch.stack(ys).view(b, nh * hd)  # (B, nh * hs)
            x = self._attn_out(x, y, lw)
            x = self._mlp_residual(x, lw)
        for s in states:
            s.length += 1
        return self._logits(x)
