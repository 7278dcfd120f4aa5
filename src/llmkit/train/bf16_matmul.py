"""bf16 matmuls at fp32 speed on CPUs without bf16 instructions.

Under bf16 autocast a linear layer rounds its input and weight to bf16, multiplies them with fp32
accumulation and rounds the output to bf16. On a CPU with AVX512-BF16 or AMX that is one native
kernel; on one without (AVX2 only), PyTorch's bf16 GEMM is several times slower than its fp32 GEMM
(about 5x on the 2-core AVX2 machine of docs/benchmarks.md). The product of two bf16 numbers is exact
in fp32, so upcasting the bf16 operands and running the fp32 GEMM gives autocast's arithmetic (up to
summation order) at fp32 speed. `linear` does that where it pays, and is F.linear elsewhere; its
gradients are rounded to bf16 as autocast's would be. Frozen bf16 weights are upcast one matmul at a
time and never stored in fp32.

The fp32 operands and products live in work buffers reused from call to call (`_Scratch`), not in fresh
tensors. Fresh ones (1-13 MB each for a 135M model) are what fragments glibc's heap during a step: on
smollm2-135m LoRA the heap held 1.0-1.2 GB of holes beside 0.85 GB of live tensors, all of it resident.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from llmkit.models.cpu_features import cpu_has_fast_bf16

BF16 = torch.bfloat16
# Work buffers are kept up to this size. Larger fp32 operands (a 49k-vocabulary head's upcast is 113 MB) stay one-off
# allocations: kept, they would stay resident for the whole run, and as their own mappings (train.memory) they leave no
# holes in the heap; their page faults are small beside the GEMM they feed.
SCRATCH_MAX_BYTES = 32 << 20


def emulated(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a bf16 matmul of these operands runs faster as an fp32 GEMM of their bf16 values."""
    if x.device.type != "cpu" or cpu_has_fast_bf16():
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16
    return autocast_bf16 or weight.dtype == BF16


class _Scratch(threading.local):
    """fp32 work buffers of this thread, one per role, grown to the largest size asked (up to SCRATCH_MAX_BYTES) and
    reused: every call's upcasts and fp32 products land in the same memory, so a step allocates only the bf16 tensors
    it keeps. Safe because nothing written here outlives the call that wrote it (results leave as new bf16 tensors)."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, role: str, shape: tuple[int, ...] | torch.Size, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        if 4 * n > SCRATCH_MAX_BYTES:
            return torch.empty(shape, dtype=torch.float32, device=device)
        buffer = self.buffers.get(role)
        if buffer is None or buffer.numel() < n or buffer.device != device:
            # a quarter more than asked: rows of varying length grow the buffer a few times, not at every new size
            self.buffers[role] = buffer = torch.empty(n + n // 4, dtype=torch.float32, device=device)
        return buffer[:n].view(shape)


_scratch = _Scratch()


def release_scratch() -> None:
    """Drop this thread's work buffers (a training run's end: they are as large as its largest fp32 product)."""
    _scratch.buffers.clear()


def _fp32(role: str, t: torch.Tensor) -> torch.Tensor:
    """t's values in fp32, in the work buffer for `role` (a new tensor while torch.compile traces: it plans its own)."""
    if torch.compiler.is_compiling():
        return t.float()
    return _scratch.take(role, t.shape, t.device).copy_(t)


def _mm(role: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (2-D, fp32) into the work buffer for `role`."""
    if torch.compiler.is_compiling():
        return a @ b
    return torch.mm(a, b, out=_scratch.take(role, (a.shape[0], b.shape[1]), a.device))


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T (+ bias) in fp32 from bf16 x and weight, (N, out) in the output's work buffer."""
    y = _mm("out", _fp32("x", _flat(x)), _fp32("weight", weight).T)
    if bias is not None:
        y += bias.to(BF16)  # bf16 bias, added in fp32 (type promotion), as F.linear of its upcast adds it
    return y


def _grad_input(g: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g W (g: the output's gradient `grad` flattened to (N, out), fp32) rounded to bf16, in the input's dtype and
    shape (grad's leading dimensions)."""
    return _mm("grad_in", g, _fp32("weight", weight)).to(BF16).to(dtype).view(*grad.shape[:-1], weight.shape[1])


def _grad_weight(g: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g^T x, the weight's gradient (out, in), rounded to bf16, in the weight's dtype."""
    return (g.T @ _fp32("x", _flat(x))).to(BF16).to(dtype)


class _Bf16Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xb, wb = x.to(BF16), weight.to(BF16)
        y = _product(xb, wb, bias)
        ctx.save_for_backward(xb if ctx.needs_input_grad[1] else None, wb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y.to(BF16).view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = _fp32("grad", _flat(grad.to(BF16)))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _grad_input(g, wb, grad, x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _grad_weight(g, xb, w_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0).to(BF16).to(b_dtype)
        return grad_x, grad_w, grad_b


class _Bf16LinearPlus(torch.autograd.Function):
    """x W^T + bias + h B^T as one fp32 result rounded once to bf16: a LoRA projection's base product and update
    without a bf16 tensor of the update and an add pass over the output (autocast rounds both, then their sum)."""

    @staticmethod
    def forward(ctx, x, weight, bias, h, b):
        xb, wb, hb, bb = x.to(BF16), weight.to(BF16), h.to(BF16), b.to(BF16)
        y = _product(xb, wb, bias)
        y.addmm_(_flat(hb).float(), bb.float().T)  # (N, parts * r) and (out, parts * r): small
        ctx.save_for_backward(xb if ctx.needs_input_grad[1] else None, wb, hb, bb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype, h.dtype, b.dtype)
        return y.to(BF16).view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, wb, hb, bb = ctx.saved_tensors
        x_dtype, w_dtype, bias_dtype, h_dtype, b_dtype = ctx.dtypes
        g = _fp32("grad", _flat(grad.to(BF16)))  # one fp32 copy of the gradient for all five products
        grads = [None] * 5
        if ctx.needs_input_grad[0]:
            grads[0] = _grad_input(g, wb, grad, x_dtype)
        if ctx.needs_input_grad[1]:
            grads[1] = _grad_weight(g, xb, w_dtype)
        if ctx.needs_input_grad[2]:
            grads[2] = g.sum(0).to(BF16).to(bias_dtype)
        if ctx.needs_input_grad[3]:
            grads[3] = (g @ bb.float()).to(BF16).to(h_dtype).view(*grad.shape[:-1], bb.shape[1])
        if ctx.needs_input_grad[4]:
            grads[4] = (g.T @ _flat(hb).float()).to(BF16).to(b_dtype)
        return tuple(grads)


def linear_plus(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
    """linear(x, weight, bias) + linear(h, b), the second product accumulated into the first's output inside one
    GEMM call (beta 1) where the dtypes allow: a LoRA projection (h = x A^T, b = B scaled), with no tensor of the
    update and no add pass over the output, forward or backward. In place on the base product is safe for autograd:
    its backward needs the product's inputs, not the product."""
    if emulated(x, weight):
        with torch.autocast("cpu", enabled=False):
            return _Bf16LinearPlus.apply(x, weight, bias, h, b)
    y = linear(x, weight, bias)
    autocast = torch.is_autocast_enabled(y.device.type)
    if autocast and y.dtype == h.dtype == torch.get_autocast_dtype(y.device.type):
        # what autocast's linear(h, b) multiplies (b cast to its dtype), accumulated into y
        with torch.autocast(y.device.type, enabled=False):
            y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), b.to(y.dtype).T)
        return y
    if not autocast and y.dtype == h.dtype == b.dtype:
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), b.T)
        return y
    return y + linear(h, b)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with autocast's bf16 arithmetic, as an fp32 GEMM where that is faster."""
    if emulated(x, weight):
        with torch.autocast("cpu", enabled=False):
            return _Bf16Linear.apply(x, weight, bias)
    if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        x = x.to(weight.dtype)  # a bf16 base outside autocast (never in training: the loop autocasts)
    return F.linear(x, weight, bias)
