"""Which models FastLlama decodes, and their weights read into its decode layout.

The family: Llama (SmolLM), Mistral, Qwen2/Qwen2.5 and Qwen3 share one block (RMSNorm, q/k/v/o,
SiLU-gated MLP, RoPE); they differ in q/k/v biases (Qwen2), a per-head RMSNorm on q and k (Qwen3),
an explicit head_dim, a sliding window and RoPE scaling. FastLlama runs all of these exactly except
a sliding window shorter than the context (it would need a banded mask and a ring cache).

Layout, per layer: q/k/v and gate/up fused; float weights transposed to (in, out), the RMSNorm weight
before each matmul folded into its rows and split into a column block per torch thread (see
`float_matmul`); quantized layers (`QuantLinear`) packed once for their kernels (weight-only, or fbgemm's
dynamic int8 for int8-dynamic), their
RMSNorm weight applied to the input instead (`QuantMatmul`). Within each q/k head, features are
reordered from HF's half-split RoPE layout to adjacent pairs, so RoPE is one complex multiply; q.k
is unchanged when q and k share the permutation. The attention scale 1/sqrt(head_dim) is folded into
q (or into q_norm's weight when the model has one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.models.llama import sliding_window_reason
from llmkit.models.quantized import QuantLinear
from llmkit.models.quantized_matmul import Int8BlockPacked, kernel_reason, pack_fp16_exact, pack_weight
from llmkit.models.rope import rope_reason

FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _projections(layer) -> list:
    return [getattr(layer.self_attn, p) for p in PROJECTIONS[:4]] + [getattr(layer.mlp, p) for p in PROJECTIONS[4:]]


def _linear_reason(model) -> str | None:
    kinds = set()
    for layer in model.model.layers:
        for lin in _projections(layer):
            if type(lin) is torch.nn.Linear:
                kinds.add("float")
            elif isinstance(lin, QuantLinear):
                # int8-dynamic's one group per row differs between layers of different widths: not a mix
                kinds.add(("quantized", lin.bits, "row" if lin.dynamic else lin.group, lin.dynamic))
                widths = (lin.out_features,) if lin.bits == 8 else (
                    sum(p.out_features for p in _projections(layer)[:3]), layer.self_attn.o_proj.out_features,
                    2 * layer.mlp.up_proj.out_features, layer.mlp.down_proj.out_features)
                reason = next(filter(None, (kernel_reason(lin.bits, w, lin.group, lin.dynamic) for w in widths)), None)
                if reason:
                    return f"no int8/int4 kernel for {reason}"
            else:  # anything else runs its own forward
                return f"the linear layers are {type(lin).__name__}"
    if len(kinds) > 1:
        return "the layers mix float and quantized (or differently quantized) projections"
    return None


def decode_unsupported_reason(model) -> str | None:
    """Why FastLlama can't decode `model` exactly, or None if it can."""
    name = type(model).__name__
    if name not in FAMILY:
        return f"{name} is not one of {', '.join(FAMILY)}"
    cfg = model.config
    reason = rope_reason(cfg)
    if reason:
        return reason
    if cfg.hidden_act != "silu":
        return f"hidden_act '{cfg.hidden_act}' is not implemented"
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        return "num_attention_heads is not a multiple of num_key_value_heads"
    reason = sliding_window_reason(cfg, cfg.max_position_embeddings)
    if reason:
        return reason
    return _linear_reason(model)


def unsupported_reason(model) -> str | None:
    """The subset the fast *training* forward (models/llama.py, train/fast_lora.py) shares with decoding: an
    unquantized model of the family that FastLlama decodes exactly. Decoding takes quantized layers too
    (`decode_unsupported_reason`)."""
    if type(model).__name__ in FAMILY and any(isinstance(lin, QuantLinear) for layer in model.model.layers
                                                 for lin in _projections(layer)):
        return "the linear layers are quantized"
    return decode_unsupported_reason(model)


class QuantMatmul:
    """A quantized projection for FastLlama: (x * pre) @ W.T through an int8/int4 kernel."""

    def __init__(self, packed, pre: torch.Tensor | None):
        self.packed, self.pre = packed, pre

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed(x if self.pre is None else x * self.pre)

    def normed(self, x: torch.Tensor, eps: float, norm) -> torch.Tensor:
        """norm(x) @ W.T, where `norm` is RMSNorm without its weight (the weight is `pre`): one call on the block
        int8 kernel, which normalises as it quantizes the input."""
        if isinstance(self.packed, Int8BlockPacked) and self.pre is not None:
            return self.packed.fused(x, self.pre, eps)
        return self(norm(x))

    def with_residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if isinstance(self.packed, Int8BlockPacked) and self.pre is None:
            return self.packed.fused(x, residual=residual)
        return self(x).add_(residual)


class LayoutBuilder:
    """Reads one model's weights into FastLlama's layout (see the module docstring)."""

    def __init__(self, model, splits: int):
        cfg = model.config
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.splits = splits
        emb = model.get_input_embeddings().weight
        self.dtype, self.device = emb.dtype, emb.device
        half = torch.arange(self.hd // 2)
        self.perm = torch.stack((half, half + self.hd // 2), -1).flatten()

    def pairs(self, w, heads):  # (heads * hd, ...) -> same shape, rows permuted within each head
        return w.detach().reshape(heads, self.hd, *w.shape[1:])[:, self.perm].reshape(w.shape)

    def float_matmul(self, w, norm=None):
        # (out, in) -> (in, out) contiguous: mm(x, w_t) with a one-row x streams memory much better
        # than F.linear's gemv (~1.4x on the micro preset). One-row matmuls are memory-bound and MKL
        # runs them on one thread, so the columns are split into `splits` blocks, one bmm batch entry
        # per thread. The RMSNorm before this matmul scales its input features: folded in here.
        w = w.detach()
        if norm is not None:
            w = w * norm.detach()
        w = w.t()  # (in, out)
        if self.splits == 1:
            return w.contiguous()
        w = F.pad(w, (0, -w.shape[1] % self.splits))  # only the vocabulary may not divide
        return w.reshape(w.shape[0], self.splits, -1).transpose(0, 1).contiguous()  # (splits, in, out / splits)

    def quant_matmul(self, parts, norm=None, row_fix=None):
        """QuantLinear parts fused along their outputs; row_fix(i, codes, scales, zeros) permutes/scales part i's rows."""
        codes, scales, zeros = [], [], []
        for i, q in enumerate(parts):
            s = q.scales.detach().float()
            z = torch.zeros_like(s) if q.zeros is None else q.zeros.detach().float()
            c = q.codes()
            if row_fix is not None:
                c, s, z = row_fix(i, c, s, z)
            codes.append(c)
            scales.append(s)
            zeros.append(z)
        zero_point = any(q.zeros is not None for q in parts)
        packed = pack_weight(torch.cat(codes), torch.cat(scales), parts[0].bits, parts[0].group,
                             torch.cat(zeros) if zero_point else None, parts[0].dynamic)
        return QuantMatmul(packed, None if norm is None else norm.detach().float())

    def head(self, model):
        """The output head with the final RMSNorm's weight: int8 where the loader made it so, fp16 on fbgemm when its
        weights are fp16 values (a quantized file's are: half the bytes, the same numbers), else like any float weight."""
        head, norm = model.get_output_embeddings(), model.model.norm.weight
        if isinstance(head, QuantLinear):  # an int8-weight file's head (`models.quantized.int8_head`)
            return self.quant_matmul([head], norm)
        weight = head.weight
        packed = pack_fp16_exact(weight)
        if packed is not None:
            return QuantMatmul(packed, norm.detach().float())
        return self.float_matmul(weight, norm)  # (C, vocab)

    def bias(self, lin, heads=None):
        if lin.bias is None:
            return torch.zeros(lin.out_features, dtype=self.dtype, device=self.device)
        return lin.bias.detach() if heads is None else self.pairs(lin.bias, heads)

    def layer(self, layer) -> tuple:
        a, m = layer.self_attn, layer.mlp
        nh, nkv = self.nh, self.nkv
        qk_norm = None
        q_scale = self.hd ** -0.5  # attention's 1/sqrt(hd), folded into q (RoPE is linear, so it commutes)
        if getattr(a, "q_norm", None) is not None:  # Qwen3: the norm would undo a scale folded before it
            q_w, k_w = self.pairs(a.q_norm.weight, 1) * q_scale, self.pairs(a.k_norm.weight, 1)
            qk_norm = torch.cat([q_w.expand(nh, self.hd), k_w.expand(nkv, self.hd)])  # (nh + nkv, hd)
            q_scale = 1.0
        if isinstance(a.q_proj, QuantLinear):
            def fix(i, c, s, z):  # q and k rows into pair order, q's scales and zeros times the attention scale
                if i == 2:
                    return c, s, z
                heads, times = (nh, q_scale) if i == 0 else (nkv, 1.0)
                return self.pairs(c, heads), self.pairs(s, heads) * times, self.pairs(z, heads) * times
            w_qkv = self.quant_matmul([a.q_proj, a.k_proj, a.v_proj], layer.input_layernorm.weight, fix)
            w_o = self.quant_matmul([a.o_proj])
            w_gu = self.quant_matmul([m.gate_proj, m.up_proj], layer.post_attention_layernorm.weight)
            w_down = self.quant_matmul([m.down_proj])
        else:
            qkv = torch.cat([self.pairs(a.q_proj.weight, nh) * q_scale, self.pairs(a.k_proj.weight, nkv),
                             a.v_proj.weight.detach()])
            w_qkv = self.float_matmul(qkv, layer.input_layernorm.weight)  # (C, (nh + 2 * nkv) * hd)
            w_o = self.float_matmul(a.o_proj.weight)  # (nh * hd, C)
            w_gu = self.float_matmul(torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                                     layer.post_attention_layernorm.weight)  # (C, 2I)
            w_down = self.float_matmul(m.down_proj.weight)  # (I, C)
        qkv_bias = None
        if any(p.bias is not None for p in (a.q_proj, a.k_proj, a.v_proj)):
            qkv_bias = torch.cat([self.bias(a.q_proj, nh) * q_scale, self.bias(a.k_proj, nkv), self.bias(a.v_proj)])
        mlp_bias = m.gate_proj.bias is not None or m.up_proj.bias is not None
        return (w_qkv, qkv_bias, w_o, None if a.o_proj.bias is None else a.o_proj.bias.detach(),
                w_gu, torch.cat([self.bias(m.gate_proj), self.bias(m.up_proj)]) if mlp_bias else None,
                w_down, None if m.down_proj.bias is None else m.down_proj.bias.detach(), qk_norm)
