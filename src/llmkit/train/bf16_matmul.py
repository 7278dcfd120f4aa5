"""bf16 matmuls at fp32 speed on CPUs without bf16 instructions.

Under bf16 autocast a linear layer rounds its input and weight to bf16, multiplies them with fp32
accumulation and rounds the output to bf16. On a CPU with AVX512-BF16 or AMX that is one native
kernel; on one without (AVX2 only), PyTorch's bf16 GEMM is several times slower than its fp32 GEMM
(about 5x on the 2-core AVX2 machine of docs/benchmarks.md). The product of two bf16 numbers is exact
in fp32, so upcasting the bf16 operands and running the fp32 GEMM gives autocast's arithmetic (up to
summation order) at fp32 speed. `linear` does that where it pays, and is F.linear elsewhere; its
gradients are rounded to bf16 as autocast's would be. Frozen bf16 weights are upcast one matmul at a
time and never stored in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.models.cpu_features import cpu_has_fast_bf16

BF16 = torch.bfloat16


def emulated(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a bf16 matmul of these operands runs faster as an fp32 GEMM of their bf16 values."""
    if x.device.type != "cpu" or cpu_has_fast_bf16():
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16
    return autocast_bf16 or weight.dtype == BF16


class _Bf16Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xb, wb = x.to(BF16), weight.to(BF16)
        y = F.linear(xb.float(), wb.float(), None if bias is None else bias.to(BF16).float())
        ctx.save_for_backward(xb if ctx.needs_input_grad[1] else None, wb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y.to(BF16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = grad.to(BF16).float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ wb.float()).to(BF16).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g.reshape(-1, g.shape[-1]).T @ xb.float().reshape(-1, xb.shape[-1])).to(BF16).to(w_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = g.reshape(-1, g.shape[-1]).sum(0).to(BF16).to(b_dtype)
        return grad_x, grad_w, grad_b


class _Bf16LinearPlus(torch.autograd.Function):
    """x W^T + bias + h B^T as one fp32 result rounded once to bf16: a LoRA projection's base product and update
    without a bf16 tensor of the update and an add pass over the output (autocast rounds both, then their sum)."""

    @staticmethod
    def forward(ctx, x, weight, bias, h, b):
        xb, wb, hb, bb = x.to(BF16), weight.to(BF16), h.to(BF16), b.to(BF16)
        y = F.linear(xb.float(), wb.float(), None if bias is None else bias.to(BF16).float())
        y.view(-1, y.shape[-1]).addmm_(hb.float().reshape(-1, hb.shape[-1]), bb.float().T)
        ctx.save_for_backward(xb if ctx.needs_input_grad[1] else None, wb, hb, bb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype, h.dtype, b.dtype)
        return y.to(BF16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, wb, hb, bb = ctx.saved_tensors
        x_dtype, w_dtype, bias_dtype, h_dtype, b_dtype = ctx.dtypes
        g = grad.to(BF16).float()  # one fp32 copy of the gradient for all five products
        g2 = g.reshape(-1, g.shape[-1])
        grads = [None] * 5
        if ctx.needs_input_grad[0]:
            grads[0] = (g @ wb.float()).to(BF16).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grads[1] = (g2.T @ xb.float().reshape(-1, xb.shape[-1])).to(BF16).to(w_dtype)
        if ctx.needs_input_grad[2]:
            grads[2] = g2.sum(0).to(BF16).to(bias_dtype)
        if ctx.needs_input_grad[3]:
            grads[3] = (g @ bb.float()).to(BF16).to(h_dtype)
        if ctx.needs_input_grad[4]:
            grads[4] = (g2.T @ hb.float().reshape(-1, hb.shape[-1])).to(BF16).to(b_dtype)
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
