"""llmkit's quantized model format: int8 / int4 weights with group-wise scales, in safetensors.

Format (documented in the README): the model folder keeps config.json and the tokenizer;
model.safetensors holds every tensor that is not quantized as usual, and for each quantized linear
layer `<name>.qweight` (int8 codes; int4 codes packed two per byte, low nibble first), `<name>.scales`
(fp32, one per group of `group_size` input weights per output row), `<name>.zeros` (fp32, same shape;
int4-weight only) and `<name>.bias` if any; the embeddings (and an untied output head) are stored as
fp16 and loaded back as fp32 (int8-weight then puts the head on the block int8 kernel: `int8_head`);
llmkit.json's `quantization` names the method, bits, group size, `zero_point` and the quantized layers.
int8: symmetric, w ≈ code * scale, scale = max|w in group| / 127. int4 (`zero_point`: true):
w ≈ code * scale + zero, the group's min..max over all 16 levels (symmetric int4 lost +60 % perplexity on
SmolLM2-135M, whose weights come from an asymmetric Q4_1 GGUF; with zero points it is exact there).
Files written before zero points (no `zero_point`) load as symmetric.

Written by `llmkit quantize` (`llmkit.optimize.quantize`), read here by `load_quantized`.

Methods: int8-weight and int4-weight run PyTorch's weight-only CPU kernels on the codes
(`llmkit.models.quantized_matmul`: bf16 activations, int8 re-quantized per row when stored in
groups; FastLlama uses the same kernels), and dequantize in the forward only where those can't
run (gradients, other devices, shapes the int4 kernel does not take); int8-dynamic runs the file's
per-row int8 codes on fbgemm's dynamic int8 matmul (activations quantized per call, int8 x int8:
`Int8DynamicPacked`), in the module and in FastLlama alike. (Until issue 18 it went through
`torch.ao.quantization.quantize_dynamic`, which re-quantized the weights per tensor and kept the model
off the fast decoder.) The kernels are called directly rather than through torchao: they are in PyTorch
itself, and this format loads with plain PyTorch anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmkit.errors import UserError
from llmkit.models.quantized_matmul import PackedWeight, block_kernel, pack_weight

METHODS = {"int8-dynamic": 8, "int8-weight": 8, "int4-weight": 4}


def quantize_tensor(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (out, in), scales fp32 (out, in // group))."""
    out_f, in_f = w.shape
    qmax = 2 ** (bits - 1) - 1
    groups = w.float().reshape(out_f, in_f // group, group)
    scales = groups.abs().amax(-1).clamp(min=1e-12) / qmax                       # (out, G)
    codes = torch.round(groups / scales[..., None]).clamp(-qmax - 1, qmax).to(torch.int8)
    return codes.reshape(out_f, in_f), scales


def quantize_tensor_zero_point(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric: (codes int8 (out, in) in [-2^(bits-1), 2^(bits-1) - 1], scales, zeros fp32 (out, in // group)),
    w ≈ code * scale + zero, the group's min..max spread over all 2^bits levels."""
    out_f, in_f = w.shape
    levels, half = 2 ** bits - 1, 2 ** (bits - 1)
    groups = w.float().reshape(out_f, in_f // group, group)
    lo, hi = groups.amin(-1), groups.amax(-1)                                     # (out, G)
    scales = ((hi - lo) / levels).clamp(min=1e-12)
    q = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, levels)
    return (q - half).to(torch.int8).reshape(out_f, in_f), scales, lo + half * scales


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    low, high = codes[:, 0::2] & 0x0F, codes[:, 1::2] & 0x0F
    return (low | (high << 4)).to(torch.uint8)                                 # (out, in / 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8)
    high = ((packed >> 4) & 0x0F).to(torch.int8)
    codes = torch.stack([low, high], -1).reshape(packed.shape[0], -1)           # (out, in)
    return torch.where(codes > 7, codes - 16, codes)


class QuantLinear(torch.nn.Module):
    """A Linear whose weight is stored as int8/int4 codes and fp32 group scales."""

    def __init__(self, in_features: int, out_features: int, bits: int, group: int, bias: bool, zero_point: bool = False,
                 dynamic: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        self.dynamic = dynamic  # int8-dynamic: activations quantized to int8 as well (not part of the saved state)
        width = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // group))
        # w = code * scale + zero per group when zero_point (int4 since issue 18); symmetric files have none
        self.register_buffer("zeros", torch.zeros(out_features, in_features // group) if zero_point else None)
        self.bias = torch.nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def codes(self) -> torch.Tensor:
        """The integer codes (out, in) as int8 (int4 values unpacked)."""
        return unpack_int4(self.qweight) if self.bits == 4 else self.qweight

    def weight_float(self) -> torch.Tensor:
        g = self.codes().reshape(self.out_features, -1, self.group).float() * self.scales[..., None]
        if self.zeros is not None:
            g = g + self.zeros[..., None]
        return g.reshape(self.out_features, self.in_features)

    def packed(self) -> PackedWeight | None:
        """The weight in a CPU kernel's layout (built once, rebuilt if the codes or scales change), or None."""
        key = tuple((t.data_ptr(), t._version) for t in (self.qweight, self.scales, self.zeros) if t is not None)
        if getattr(self, "_packed_key", None) != key:
            self._packed = pack_weight(self.codes(), self.scales, self.bits, self.group, self.zeros, self.dynamic)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference on CPU runs the kernels; a forward that needs gradients for x (or
        # runs elsewhere) dequantizes, as the kernels have no backward.
        packed = None
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
            packed = self.packed()
        if packed is None:
            return self.forward_dequantized(x)
        y = packed(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def forward_dequantized(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_float().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def linears(lm) -> dict[str, torch.nn.Module]:
    """The linear layers but the output head: nn.Linear, and GPT-2's Conv1D, a linear layer whose weight is stored
    (in, out) (quantize and prune did nothing to a GPT-2 and said they had)."""
    from transformers.pytorch_utils import Conv1D

    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return {n: m for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear | Conv1D) and m is not head}


def out_in(layer: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as (out, in), a view of the parameter's own storage."""
    return layer.weight if isinstance(layer, torch.nn.Linear) else layer.weight.t()


def set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def load_quantized(path: Path, info: dict[str, Any]):
    """Build the architecture from config.json, put QuantLinear layers in, load the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    lm = AutoModelForCausalLM.from_config(config)  # buffers such as RoPE's inv_freq are computed, not stored
    zero_point = bool(info.get("zero_point"))  # absent in files written before zero points: symmetric
    for name in info["modules"]:
        lin = lm.get_submodule(name)
        out_features, in_features = out_in(lin).shape
        group = in_features if info["method"] == "int8-dynamic" else info["group_size"]
        set_module(lm, name, QuantLinear(in_features, out_features, info["bits"], group, lin.bias is not None,
                                         zero_point, dynamic=info["method"] == "int8-dynamic"))
    state = load_file(str(path / "model.safetensors"))
    lm.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        lm.tie_weights()
    expected = set(lm.state_dict()) - ({"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set())
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"{path}: quantized weights are missing {missing[:3]}; the folder is damaged")
    if info["method"] == "int8-weight":
        int8_head(lm, info["group_size"])
    lm.eval()
    return lm


def int8_head(lm, group: int) -> None:
    """Put the output head on the block int8 kernel, as llama.cpp's q8_0 does with its output (or tied token_embd).

    Why: at batch 1 the fp16 head of SmolLM2-135M (49,152 x 576) takes ~3.9 ms of a ~13 ms step and the block
    kernel ~2.0 ms; perplexity moves by +0.05 % (measured, FastLlama, tinyshakespeare). The file keeps the head fp16
    (a tied embedding is the head), so this is a rounding at load, like the per-row re-quantization of groups where
    the block kernel does not run; there the head stays fp16, which fbgemm runs at least as fast as a per-row int8."""
    head = lm.get_output_embeddings()
    if (not isinstance(head, torch.nn.Linear) or head.bias is not None
            or not block_kernel(8, head.in_features, group, None, dynamic=False)):
        return
    q = QuantLinear(head.in_features, head.out_features, 8, group, bias=False)
    codes, scales = quantize_tensor(head.weight.detach(), 8, group)
    q.qweight.copy_(codes)
    q.scales.copy_(scales)
    set_module(lm, next(name for name, module in lm.named_modules() if module is head), q)
