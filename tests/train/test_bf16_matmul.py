"""bf16 matmuls as fp32 GEMMs of bf16 values: autocast's arithmetic, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.train import bf16_matmul
from llmkit.train.bf16_matmul import _Bf16Linear, linear, linear_plus


def _operands(weight_dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 48, generator=g).requires_grad_()
    w = (torch.randn(40, 48, generator=g) * 0.2).to(weight_dtype).requires_grad_()
    b = torch.randn(40, generator=g).requires_grad_()
    return x, w, b


def test_the_fp32_gemm_of_bf16_values_is_autocasts_bf16_linear_with_its_gradients():
    x, w, b = _operands()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.linear(x, w, b)
    with torch.autocast("cpu", enabled=False):
        got = _Bf16Linear.apply(x, w, b)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
    seed = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    want_grads = torch.autograd.grad((want.float() * seed).sum(), (x, w, b))
    got_grads = torch.autograd.grad((got.float() * seed).sum(), (x, w, b))
    for g_got, g_want in zip(got_grads, want_grads, strict=True):
        assert g_got.dtype == g_want.dtype
        torch.testing.assert_close(g_got, g_want, atol=2e-2, rtol=2e-2)


def test_a_frozen_bf16_weight_gets_no_gradient_and_keeps_nothing_extra_for_backward():
    x, w, _ = _operands(torch.bfloat16)
    w.requires_grad_(False)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", enabled=False):
            y = _Bf16Linear.apply(x, w, None)
    (grad_x,) = torch.autograd.grad(y.float().sum(), (x,))
    assert grad_x.dtype == torch.float32 and grad_x.abs().sum() > 0
    assert all(t is w for t in saved)  # the weight itself (no fp32 copy), and not the input: nothing needs it


def test_linear_outside_autocast_is_f_linear():
    x, w, b = _operands()
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("path", ["emulated", "native"])
def test_linear_plus_is_the_base_product_plus_the_lora_update_with_their_gradients(path, monkeypatch):
    """One rounding of the sum (ours) against autocast's two roundings and an add (peft's): the same up to bf16."""
    monkeypatch.setattr(bf16_matmul, "cpu_has_fast_bf16", lambda: path == "native")
    x, w, bias = _operands(torch.bfloat16)
    w.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    a = (torch.randn(8, 48, generator=g) * 0.2).requires_grad_()
    b = (torch.randn(40, 8, generator=g) * 0.2).requires_grad_()
    seed = torch.randn(2, 7, 40, generator=g)
    results = []
    for fused in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = linear(x, a)
            y = linear_plus(x, w, bias, h, b) if fused else F.linear(x, w, bias) + F.linear(h, b)
        assert y.dtype == torch.bfloat16
        results.append((y, torch.autograd.grad((y.float() * seed).sum(), (x, bias, a, b))))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)
    for g_got, g_want in zip(got_grads, want_grads, strict=True):
        assert g_got.dtype == g_want.dtype
        torch.testing.assert_close(g_got, g_want, atol=5e-2, rtol=3e-2)


def test_linear_plus_in_fp32_is_exactly_the_two_products_summed():
    x, w, bias = _operands()
    h, b = torch.randn(2, 7, 8, requires_grad=True), torch.randn(40, 8, requires_grad=True)
    torch.testing.assert_close(linear_plus(x, w, bias, h, b), F.linear(x, w, bias) + F.linear(h, b))
