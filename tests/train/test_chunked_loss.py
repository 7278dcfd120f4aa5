"""The chunked cross-entropy of a linear head: F.cross_entropy's value and gradients, without vocabulary-sized
tensors kept for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.train import chunked_loss
from llmkit.train.chunked_loss import IGNORE, linear_cross_entropy, shifted_loss_sum

N, C, V = 37, 24, 301


def _inputs(seed: int = 0, requires_weight_grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(V, C, generator=g) * 0.3).requires_grad_(requires_weight_grad)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::4] = IGNORE
    return hidden, weight, targets


def _reference(hidden, weight, targets):
    return F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize(("chunk", "rows"), [(1, 32), (7, 32), (N + 5, 32), (N + 5, 4), (7, 3)])
def test_value_and_gradients_equal_cross_entropy_on_full_logits(chunk, rows, monkeypatch):
    monkeypatch.setattr(chunked_loss, "SOFTMAX_ROWS", rows)  # softmax blocks that do not divide the chunk
    hidden, weight, targets = _inputs()
    want = _reference(hidden, weight, targets)
    want_h, want_w = torch.autograd.grad(want * 0.5, (hidden, weight))  # a scaled loss, as gradient accumulation uses
    got = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    got_h, got_w = torch.autograd.grad(got * 0.5, (hidden, weight))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_h, want_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_frozen_head_gets_no_gradient_and_no_grad_mode_gives_the_same_value():
    hidden, weight, targets = _inputs(1, requires_weight_grad=False)
    got = linear_cross_entropy(hidden, weight, targets, chunk=5)
    (got_h,) = torch.autograd.grad(got, (hidden,))
    want = _reference(hidden, weight, targets)
    (want_h,) = torch.autograd.grad(want, (hidden,))
    torch.testing.assert_close(got_h, want_h, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk=5), want.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [32, 3])
def test_bf16_autocast_scores_bf16_logits_in_fp32_as_an_hf_model_does(rows, monkeypatch):
    monkeypatch.setattr(chunked_loss, "SOFTMAX_ROWS", rows)
    hidden, weight, targets = _inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight)  # what an HF head gives under autocast: bf16 logits, then .float()
        want = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        got = linear_cross_entropy(hidden, weight, targets, chunk=8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    want_h, want_w = torch.autograd.grad(want, (hidden, weight))
    got_h, got_w = torch.autograd.grad(got, (hidden, weight))
    assert got_h.dtype == hidden.dtype and got_w.dtype == weight.dtype
    torch.testing.assert_close(got_h, want_h, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_w, want_w, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("block", [64, 1000])
def test_the_emulated_bf16_head_upcast_in_blocks_scores_as_autocast_does(block, monkeypatch):
    """The path of CPUs without bf16 instructions, taken here on any CPU: fp32 GEMMs of bf16 values, the head upcast
    `block` rows at a time (64 does not divide the 301 rows), logits rounded to bf16 before the fp32 softmax."""
    monkeypatch.setattr(chunked_loss, "HEAD_BLOCK", block)
    hidden, weight, targets = _inputs(3)
    keep = targets != IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=IGNORE, reduction="sum")
    h, w = hidden[keep].to(torch.bfloat16), weight.to(torch.bfloat16)
    got = chunked_loss._LinearCrossEntropy.apply(h, w, targets[keep], 8, True, True, True)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    want_h, want_w = torch.autograd.grad(want, (hidden, weight))
    got_h, got_w = torch.autograd.grad(got, (hidden, weight))
    torch.testing.assert_close(got_h, want_h, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_w, want_w, atol=2e-2, rtol=2e-2)


def test_nothing_vocabulary_sized_is_kept_for_backward():
    hidden, weight, targets = _inputs(3)
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _reference(hidden, weight, targets)
    assert max(saved) >= N * V  # the plain loss keeps the logits (the test can tell)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        linear_cross_entropy(hidden, weight, targets, chunk=8)
    assert max(saved) <= V * C  # the head's own gradient at most, never N x V logits


def test_shifted_loss_predicts_the_next_labelled_token():
    g = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(2, 6, C, generator=g), torch.randn(V, C, generator=g)
    labels = torch.randint(0, V, (2, 6), generator=g)
    labels[0, :3] = IGNORE
    total, n = shifted_loss_sum(hidden, weight, labels, chunk=3)
    logits = hidden @ weight.T
    want = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")
    assert n == 10 - 2
    torch.testing.assert_close(total, want, atol=1e-5, rtol=1e-5)


def test_no_labelled_position_scores_zero_with_a_zero_gradient():
    hidden, weight, targets = _inputs(5)
    got = linear_cross_entropy(hidden, weight, torch.full_like(targets, IGNORE))
    (got_h,) = torch.autograd.grad(got, (hidden,))
    assert float(got.detach()) == 0.0 and not got_h.any()
