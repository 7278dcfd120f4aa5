"""The pretraining loss: on our Llama the head runs chunk by chunk inside the loss (never all the logits), and it
must equal the plain cross-entropy over the whole logits, in value and gradient, through the model's wrappers."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from llmkit.models.llama import Llama
from llmkit.models.presets import model_fields, plain_config
from llmkit.train import chunked_loss
from llmkit.train.lm_loss import _own_llama, evaluate_lm, lm_loss, lm_loss_sum


def _model(vocab: int = 97, context: int = 16) -> Llama:
    torch.manual_seed(0)
    fields = model_fields("nano", vocab, context, overrides={"hidden_size": 32, "num_hidden_layers": 2,
                                                               "num_attention_heads": 2, "num_key_value_heads": 2,
                                                               "intermediate_size": 64})
    return Llama(plain_config(fields))


def _batch(vocab: int = 97, context: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (3, context), generator=g), torch.randint(0, vocab, (3, context), generator=g)


def _plain(model: Llama, x, y) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@pytest.mark.parametrize("rows", [0, 5])  # 0: the default chunking (one chunk here); 5 does not divide 48 positions
def test_chunked_loss_equals_cross_entropy_over_all_logits_with_the_same_gradients(monkeypatch, rows):
    if rows:
        monkeypatch.setattr(chunked_loss, "CHUNK_LOGITS", rows * 97)
    x, y = _batch()
    ours, ref = _model(), _model()
    loss = lm_loss(ours, x, y)
    expected = _plain(ref, x, y)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_forward_hidden_gives_the_states_the_head_turns_into_logits():
    x, _ = _batch()
    model = _model()
    states = model(x, hidden=True)
    assert states.shape == (3, 16, 32)
    torch.testing.assert_close(model.lm_head(states), model(x))


def test_the_chunked_path_is_taken_through_wrappers_and_an_hf_style_model_keeps_the_logits(monkeypatch):
    calls = []
    real = chunked_loss.linear_cross_entropy
    monkeypatch.setattr("llmkit.train.lm_loss.linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = _batch()
    model = _model()

    class Wrapper(torch.nn.Module):  # what DDP looks like to the loss: the model under `.module`, called through forward
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    expected = float(_plain(model, x, y))
    assert float(lm_loss(Wrapper(model), x, y)) == pytest.approx(expected, rel=1e-5)
    assert float(lm_loss(model, x, y)) == pytest.approx(expected, rel=1e-5)
    assert len(calls) == 2
    assert _own_llama(torch.compile(model)) is model  # found under torch.compile's wrapper too (not compiled here)

    class HfStyle(torch.nn.Module):  # any other causal LM: logits from forward, the plain cross-entropy
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids)

    assert float(lm_loss_sum(HfStyle(model), x, y)) == pytest.approx(expected * y.numel(), rel=1e-5)
    assert len(calls) == 2


def test_evaluation_sums_the_same_loss_over_every_window():
    x, y = _batch()
    model = _model()
    out = evaluate_lm(model, [(x[:2], y[:2]), (x[2:], y[2:])], "cpu", nullcontext)
    assert out["val_tokens"] == y.numel()
    assert out["val_loss"] == pytest.approx(float(_plain(model, x, y)), rel=1e-5)
