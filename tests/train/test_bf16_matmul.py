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


def _lora_step(x, w, bias, a, b):
    """A LoRA projection's output and its gradients for the input, bias and adapters, under bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear_plus(x, w, bias, linear(x, a), b)
    seed = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    return y, torch.autograd.grad((y.float() * seed).sum(), (x, bias, a, b))


def test_emulated_products_reuse_their_fp32_work_buffers_and_return_tensors_of_their_own(monkeypatch):
    """The upcasts and fp32 products of every call land in the same buffers; what a call returns is never one of
    them, so a later call cannot change an earlier result."""
    monkeypatch.setattr(bf16_matmul, "cpu_has_fast_bf16", lambda: False)
    bf16_matmul.release_scratch()
    x, w, bias = _operands(torch.bfloat16)
    w.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(8, 48, generator=g) * 0.2).requires_grad_(), (torch.randn(40, 8, generator=g) * 0.2).requires_grad_()
    first, first_grads = _lora_step(x, w, bias, a, b)
    kept = first.clone(), [t.clone() for t in first_grads]
    buffers = {role: t.data_ptr() for role, t in bf16_matmul._scratch.buffers.items()}
    assert {"x", "weight", "out", "grad", "grad_in"} <= set(buffers)  # forward and backward both used them
    second, second_grads = _lora_step(x * 2, w, bias, a, b)  # the same shapes, other values
    assert {role: t.data_ptr() for role, t in bf16_matmul._scratch.buffers.items()} == buffers  # reused, not reallocated
    assert torch.equal(first, kept[0]) and all(torch.equal(t, k) for t, k in zip(first_grads, kept[1], strict=True))
    assert not torch.equal(second, first)
    bf16_matmul.release_scratch()
    assert not bf16_matmul._scratch.buffers
    monkeypatch.setattr(bf16_matmul, "SCRATCH_MAX_BYTES", 4 * 48 * 8)  # a head's upcast, say: one-off, not kept
    big, big_grads = _lora_step(x, w, bias, a, b)
    kept = bf16_matmul._scratch.buffers  # what fits under the cap (the A, (8, 48)), and nothing that does not
    assert "weight" in kept and not {"x", "grad_in"} & set(kept)
    torch.testing.assert_close(big, first)
    torch.testing.assert_close(big_grads, first_grads)
    bf16_matmul.release_scratch()


def test_emulated_products_trace_under_torch_compile_without_the_work_buffers(monkeypatch):
    """torch.compile plans its own buffers: while it traces, the products allocate as plain tensor code would, in one
    graph, with the eager path's values."""
    monkeypatch.setattr(bf16_matmul, "cpu_has_fast_bf16", lambda: False)
    x, w, bias = _operands(torch.bfloat16)
    w.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(8, 48, generator=g) * 0.2).requires_grad_(), (torch.randn(40, 8, generator=g) * 0.2).requires_grad_()
    eager, eager_grads = _lora_step(x, w, bias, a, b)
    torch._dynamo.reset()
    bf16_matmul.release_scratch()
    compiled = torch.compile(lambda *t: linear_plus(t[0], t[1], t[2], linear(t[0], t[3]), t[4]), backend="aot_eager",
                             fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(x, w, bias, a, b)
    seed = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((y.float() * seed).sum(), (x, bias, a, b))
    assert not bf16_matmul._scratch.buffers  # nothing of the eager path's buffers in the graph
    torch.testing.assert_close(y.float(), eager.float(), atol=1e-2, rtol=1e-2)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
