"""models.attention: the bf16 training attention against PyTorch's own, in fp64, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.models import attention as attention_module
from llmkit.models.attention import attention
from llmkit.models.llama import document_mask


@pytest.fixture(autouse=True)
def _native_bf16(monkeypatch):
    """Our kernel on every CPU: its arithmetic does not depend on the CPU, only whether it pays does."""
    monkeypatch.setattr(attention_module, "cpu_has_fast_bf16", lambda: True)


def _inputs(B, H, KV, T, D, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, T, D, generator=g).to(dtype).requires_grad_() for n in (H, KV, KV))
    return q, k, v, torch.randn(B, H, T, D, generator=g).to(dtype)


def _reference(q, k, v, do, mask):
    """PyTorch's attention in fp64 on the same (rounded) inputs: output and input gradients."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, is_causal=mask is None,
                                       enable_gqa=k.shape[1] != q.shape[1])
    o.backward(do.double())
    return o, q64.grad, k64.grad, v64.grad


def _ours_and_flash(q, k, v, do, mask):
    results = []
    for fn in (lambda: attention(q, k, v, mask),
               lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                      enable_gqa=k.shape[1] != q.shape[1])):
        for t in (q, k, v):
            t.grad = None
        o = fn()
        o.backward(do)
        results.append((o, q.grad, k.grad, v.grad))
    return results


@pytest.mark.parametrize("block", [128, 16], ids=["one-block", "blocks-of-16"])
@pytest.mark.parametrize(("B", "H", "KV", "T", "D", "packed"), [
    (2, 6, 2, 64, 32, False),   # grouped-query attention, plain causal
    (2, 4, 4, 50, 16, False),   # one key/value head per query head; blocks of 16, 17 and 17 query times
    (2, 6, 3, 64, 32, True),    # packed rows: attention within each document only
])
def test_bf16_attention_is_as_close_to_exact_as_pytorchs_own(B, H, KV, T, D, packed, block, monkeypatch):
    monkeypatch.setattr(attention_module, "CAUSAL_BLOCK", block)
    _as_close_to_exact_as_pytorchs_own(B, H, KV, T, D, packed)


def _as_close_to_exact_as_pytorchs_own(B, H, KV, T, D, packed):
    """attention() and PyTorch's bf16 kernel against fp64, values and gradients; both results returned."""
    q, k, v, do = _inputs(B, H, KV, T, D)
    mask = None
    if packed:  # documents of 20, 30 and 14 tokens in row 0; T and none in row 1
        mask = document_mask(torch.stack([torch.cat([torch.arange(20), torch.arange(30), torch.arange(T - 50)]),
                                          torch.arange(T)]))
    exact = _reference(q, k, v, do, mask)
    ours, flash = _ours_and_flash(q, k, v, do, mask)
    for name, got, pytorch, want in zip(("output", "dq", "dk", "dv"), ours, flash, exact, strict=True):
        assert got.dtype == torch.bfloat16 and got.shape == want.shape, name
        err, err_pytorch = (got.double() - want).abs().max(), (pytorch.double() - want).abs().max()
        scale = want.abs().max()
        # bf16 keeps 8 bits: within 2 % of the largest value, and never far worse than PyTorch's kernel
        assert err <= 0.02 * scale and err <= 2 * err_pytorch + 1e-3 * scale, (name, float(err), float(err_pytorch))
    return (q, k, v, mask), ours, flash


@pytest.mark.parametrize("packed", [False, True])
def test_a_token_never_sees_the_future_or_another_document(packed, monkeypatch):
    """Changing token t's key/value changes no output before t, nor any output of another document."""
    monkeypatch.setattr(attention_module, "CAUSAL_BLOCK", 8)  # causal: blocks of query times [0, 8), [8, 16), ...
    B, H, KV, T, D = 1, 4, 2, 32, 16
    q, k, v, _ = _inputs(B, H, KV, T, D)
    mask = document_mask(torch.cat([torch.arange(12), torch.arange(20)])[None]) if packed else None
    with torch.enable_grad():
        before = attention(q, k, v, mask).detach()
        k2, v2 = k.detach().clone(), v.detach().clone()
        k2[:, :, 5] += 3.0
        v2[:, :, 5] += 3.0
        after = attention(q, k2.requires_grad_(), v2.requires_grad_(), mask).detach()
    changed = (after != before).any(-1).any(1)[0]          # (T,): which query positions moved
    assert not changed[:5].any() and changed[5:12].all()
    assert not changed[12:].any() if packed else changed[12:].all()  # another document / the rest of the row


def test_pytorchs_kernel_is_used_where_ours_does_not_pay(monkeypatch):
    """fp32, or a score matrix over the memory bound: exactly F.scaled_dot_product_attention."""
    q, k, v, _ = _inputs(1, 4, 2, 16, 8, dtype=torch.float32)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(attention(q, k, v), want)
    monkeypatch.setattr(attention_module, "MAX_SCORES", 4 * 16 * 16 - 1)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    assert torch.equal(attention(qb, kb, vb), F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True))


def test_under_autocast_fp32_inputs_are_attended_in_bf16_and_gradients_come_back_fp32():
    q, k, v, do = _inputs(1, 4, 2, 16, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = attention(q, k, v)
    assert o.dtype == torch.bfloat16
    o.backward(do.bfloat16())
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.float32
    exact = _reference(q, k, v, do, None)
    assert (q.grad.double() - exact[1]).abs().max() <= 0.02 * exact[1].abs().max()


def test_the_output_does_not_depend_on_whether_gradients_are_recorded():
    """A policy (with gradients) and its frozen reference (without) must score the same weights alike."""
    q, k, v, _ = _inputs(2, 6, 2, 32, 16)
    with torch.no_grad():
        frozen = attention(q, k, v)
    assert torch.equal(attention(q, k, v), frozen)
    assert not torch.equal(frozen, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))  # ours ran


@pytest.mark.parametrize("cuts", [(None, None, None), (6, 7, 9)], ids=["causal", "packed"])
def test_compiled_it_neither_recompiles_for_each_new_mask_nor_changes_the_result(cuts):
    """`train sft --compile [--packing]`: every batch brings a new mask, and the causal bias cache fills on first use;
    the eager caches must stay out of the graph, or each change recompiles."""
    torch._dynamo.reset()
    attention_module._BIASES.clear()  # as in a fresh process: the first call fills it
    compiled = torch.compile(attention, backend="eager", dynamic=False)
    q, k, v, do = _inputs(2, 4, 2, 16, 8)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for cut in cuts:
            mask = None if cut is None else document_mask(
                torch.stack([torch.cat([torch.arange(cut), torch.arange(16 - cut)]), torch.arange(16)]))
            got = compiled(q, k, v, mask)
            got.backward(do)
            assert torch.equal(got, attention(q, k, v, mask))
    torch._dynamo.reset()


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_without_bf16_instructions_bf16_attention_runs_the_fp32_kernel_on_the_bf16_values(packed, monkeypatch):
    """Where PyTorch's bf16 kernel is slow (no bf16 instructions): its backward runs in fp32 on the same bf16 values,
    gradients rounded to bf16, as close to exact as the bf16 kernel's, and the output alike with and without
    gradients."""
    monkeypatch.setattr(attention_module, "cpu_has_fast_bf16", lambda: False)
    (q, k, v, mask), ours, flash = _as_close_to_exact_as_pytorchs_own(2, 6, 2, 64, 32, packed)
    assert torch.equal(ours[0], flash[0])  # the forward is PyTorch's bf16 kernel, bit for bit
    assert not torch.equal(ours[1], flash[1])  # the backward is not: fp32
    with torch.no_grad():
        assert torch.equal(attention(q, k, v, mask), ours[0])
    dropped = attention(q, k, v, mask, dropout=0.5)  # dropout: PyTorch's own kernel, which draws the mask
    assert dropped.dtype == torch.bfloat16 and not torch.equal(dropped, ours[0])
