"""Weight-only int8 / int4 matmuls on PyTorch's own CPU kernels, for llmkit's quantized format.

Why: dequantizing a layer's codes to fp32 on every forward made the quantized models slower than
fp32 (int8 ~4x, int4 ~15x at batch 1). `aten._weight_int8pack_mm` and `aten._weight_int4pack_mm_for_cpu`
(the kernels behind torchao's CPU layouts) read the codes directly, so a decode step streams a
quarter (int8) or an eighth (int4) of the fp32 weight bytes.

What they compute, and how that differs from the dequantized matmul:
- Both kernels are fast only for bf16 activations on CPU (fp32 inputs take a scalar path, ~40x
  slower), so the input is rounded to bf16, the scales are bf16 and the output comes back from bf16:
  relative rounding of ~2^-9 on each, the usual price of bf16 inference, far below the int4 error.
- int4: codes c in [-8, 7] with a scale and a zero (0 in symmetric files) per group of `group`
  inputs map to the kernel's (q - 8) * scale + zero with q = c + 8: the same weights. Groups of 32/64/128/256
  only, and output widths that are multiples of 16 (the kernel's tiles).
- int8: the kernel takes one scale per output row. A file quantized per row (group = in_features)
  runs as stored; with smaller groups the weights c * s_group are re-quantized per row at load,
  round(c * s_group / s_row) with s_row = max|w| / 127: one more rounding of at most half a row
  step (s_row / 2) per weight, on top of the group step of the file.
`QuantLinear.weight_float()` is still the exact dequantization; the tests bound the difference.

int8 in groups of a multiple of 32 runs on llmkit's own kernel where it is available (`Int8BlockPacked`,
`models.native_kernel`: AVX2, a C compiler): the file's group scales as they are (no re-quantization per
row), activations quantized to int8 per block of 32 inputs (as llama.cpp's q8_0 does), integer dot
products. On AVX2 it is 2-2.5x faster than `_weight_int8pack_mm` at batch 1 and no slower batched, and
its error is smaller (a block scale follows an outlier feature only within its 32 inputs).

int8-dynamic (`Int8DynamicPacked`) quantizes the activations too, per row and per call, and multiplies
int8 by int8 on fbgemm's `quantized::linear_dynamic` with the file's per-row codes and scales as they are
(W8A8). It is the fastest at batch 1 on AVX2 (SmolLM2-135M's 30 layers, 2 threads: 6.0 ms per token
against 8.9 for `_weight_int8pack_mm`, which converts every code to float), but one 7-bit scale per row
of activations is coarse where a language model has outlier features: SmolLM2-135M loses 9.7 % perplexity
(per row; 490 % with PyTorch's per-tensor dynamic Linear, which llmkit used before) where int8-weight
loses 0.06 %. Encoders and classifiers keep their accuracy with it. `reduce_range` (7-bit activations) as
PyTorch's own dynamic Linear uses on x86: AVX2's u8 x s8 pair sums saturate at 16 bits otherwise.

The output head of a quantized file is stored fp16 (the format's own precision). int8-weight runs it on
the block int8 kernel as well where that runs (quantized at load, `models.quantized.int8_head`: llama.cpp's
q8_0 quantizes its output too); otherwise the fast decoder runs it on fbgemm's fp16 matmul (`Fp16Packed`:
fp16 weights, fp32 activations and accumulation): the same values as the fp32 copy at half the bytes,
only used when the weights are exactly fp16 values.
"""

from __future__ import annotations

import abc
import warnings

import torch

KERNEL_DTYPE = torch.bfloat16
INT4_GROUPS = (32, 64, 128, 256)


def kernels_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def kernel_reason(bits: int, out_features: int, group: int, dynamic: bool = False) -> str | None:
    """Why a (bits, out_features, group) layer has no kernel here, or None."""
    if dynamic:
        return None if "fbgemm" in torch.backends.quantized.supported_engines else "int8 activations (no fbgemm)"
    if not kernels_available():
        return f"torch {torch.__version__} has no weight-only int8/int4 CPU kernels"
    if bits == 4 and group not in INT4_GROUPS:
        return f"int4 groups of {group} (the kernel takes {', '.join(map(str, INT4_GROUPS))})"
    if bits == 4 and out_features % 16:
        return f"int4 layer of {out_features} outputs (the kernel needs a multiple of 16)"
    if bits not in (4, 8):
        return f"{bits}-bit weights"
    return None


class PackedWeight(abc.ABC):
    """A weight in a kernel's layout: `self(x)` is x @ W.T for x (M, in) of any float dtype, in x's dtype."""

    out_features: int

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T through the layout's kernel."""


class Int8Packed(PackedWeight):
    def __init__(self, codes: torch.Tensor, row_scales: torch.Tensor):
        self.codes = codes.contiguous()  # (out, in) int8
        self.scales = row_scales.to(KERNEL_DTYPE).contiguous()  # (out,)
        self.out_features = codes.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.to(KERNEL_DTYPE), self.codes, self.scales).to(x.dtype)


class Int8BlockPacked(PackedWeight):
    def __init__(self, codes: torch.Tensor, scales: torch.Tensor):
        from llmkit.models.native_kernel import BLOCK

        self.codes = codes.contiguous()  # (out, in) int8 in -127..127
        # one scale per block of 32 inputs: a group of 64 or 128 repeats its scale over its blocks
        self.scales = scales.float().repeat_interleave(codes.shape[1] // scales.shape[1] // BLOCK, dim=1).contiguous()
        self.out_features = codes.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)

    def fused(self, x: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 0.0,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        """RMSNorm(x) with weight `norm` (when given) @ W.T (+ residual), in one kernel call."""
        from llmkit.models.native_kernel import q8_matmul

        return q8_matmul(x, self.codes, self.scales, norm, eps, residual).to(x.dtype)


def block_kernel(bits: int, in_features: int, group: int, zeros: torch.Tensor | None, dynamic: bool) -> bool:
    """Whether a layer runs on llmkit's block int8 kernel: symmetric int8 in groups of a multiple of 32."""
    from llmkit.models import native_kernel

    return (bits == 8 and not dynamic and zeros is None and group % native_kernel.BLOCK == 0
            and in_features % group == 0 and native_kernel.available())


class Int8DynamicPacked(PackedWeight):
    def __init__(self, codes: torch.Tensor, row_scales: torch.Tensor):
        zeros = torch.zeros(codes.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated in PyTorch; fbgemm's packing still takes them
            warnings.simplefilter("ignore", UserWarning)
            q = torch._make_per_channel_quantized_tensor(codes.contiguous(), row_scales.double(), zeros, 0)
            self.packed = torch.ops.quantized.linear_prepack(q, None)
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        # fbgemm picks one activation scale and zero point from the min and max of the whole input. Each
        # row is divided by its own max |x| first, and this row of -1 and +1 is appended, so min and max
        # are always -1 and +1: every row is quantized on its own range, whatever else is in the batch.
        self.bounds = torch.ones(self.in_features)
        self.bounds[::2] = -1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # few ops: at batch 1 each extra op costs about as much as a tenth of the matmul
        rows = torch.empty(x.shape[0] + 1, self.in_features)
        rows[-1] = self.bounds
        amax = torch.linalg.vector_norm(x.float(), float("inf"), -1, keepdim=True).clamp_min_(1e-30)  # (M, 1)
        torch.div(x, amax, out=rows[:-1])
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)[:-1].mul_(amax)
        return y.to(x.dtype)


class Int4Packed(PackedWeight):
    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int):
        # codes (out, in) in [-8, 7]; scales, zeros (out, in / group). Kernel: (q - 8) * scale + zero per group.
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu((codes.to(torch.int32) + 8).contiguous(), 1)
        self.scales_zeros = torch.stack([scales.t(), zeros.t()], -1).to(KERNEL_DTYPE).contiguous()  # (G, out, 2)
        self.group, self.out_features = group, codes.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(KERNEL_DTYPE), self.packed, self.group, self.scales_zeros)
        return y.to(x.dtype)


class Fp16Packed(PackedWeight):
    def __init__(self, weight: torch.Tensor):
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), None)
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float().contiguous(), self.packed).to(x.dtype)


def pack_fp16_exact(weight: torch.Tensor) -> Fp16Packed | None:
    """An fp32 (out, in) weight whose every value is an fp16 value, on fbgemm's fp16 matmul; else None."""
    if (weight.dtype != torch.float32 or weight.device.type != "cpu"
            or "fbgemm" not in torch.backends.quantized.supported_engines):
        return None
    w = weight.detach()
    if not torch.equal(w.half().float(), w):
        return None
    return Fp16Packed(w)


def per_row_int8(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None):
    """Group-wise int8 (codes (out, in), scales and zeros (out, G)) as per-row symmetric int8 (codes, scales (out,))."""
    if scales.shape[1] == 1 and zeros is None:
        return codes, scales[:, 0]
    out_f, in_f = codes.shape
    w = codes.float().reshape(out_f, scales.shape[1], -1) * scales[..., None]
    w = (w if zeros is None else w + zeros[..., None]).reshape(out_f, in_f)
    row = w.abs().amax(-1).clamp(min=1e-12) / 127
    return torch.round(w / row[:, None]).clamp(-128, 127).to(torch.int8), row


def pack_weight(codes: torch.Tensor, scales: torch.Tensor, bits: int, group: int,
                zeros: torch.Tensor | None = None, dynamic: bool = False) -> PackedWeight | None:
    """codes (out, in) int8 (int4 values unpacked), scales and zeros (None: symmetric) (out, in / group) -> a kernel
    layout, or None. dynamic: int8 activations too (int8-dynamic)."""
    if kernel_reason(bits, codes.shape[0], group, dynamic):
        return None
    zeros = None if zeros is None else zeros.detach().float()
    if block_kernel(bits, codes.shape[1], group, zeros, dynamic):
        return Int8BlockPacked(codes, scales)
    if dynamic:
        return Int8DynamicPacked(*per_row_int8(codes, scales.float(), zeros))
    if bits == 8:
        return Int8Packed(*per_row_int8(codes, scales.float(), zeros))
    return Int4Packed(codes, scales.float(), torch.zeros_like(scales.float()) if zeros is None else zeros, group)
