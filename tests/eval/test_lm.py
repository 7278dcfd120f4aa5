"""eval/lm.py's perplexity on real (tiny, randomly initialised) transformers models: the body-then-chunked-head
path where a model's logits are its head over its final states, and whole logits where they are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from llmkit.eval import lm as lm_eval

VOCAB = 97


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _softcapped() -> Gemma2ForCausalLM:
    """Gemma 2 soft-caps its logits (cap * tanh(logits / cap)): its head alone is not its logits."""
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          final_logit_softcapping=0.5, sliding_window=64)
    return Gemma2ForCausalLM(config).eval()


def _by_hand(model, ids: np.ndarray, context: int) -> float:
    """Non-overlapping windows, every target from its own window, log-softmax over the model's whole logits."""
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            window = torch.from_numpy(ids[start: start + context + 1]).long()
            logp = torch.log_softmax(model(input_ids=window[None, :-1]).logits[0].double(), -1)
            nll -= float(logp[torch.arange(len(window) - 1), window[1:]].sum())
    return nll


def _heads_outputs(model) -> list[torch.Size]:
    shapes: list[torch.Size] = []
    model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    return shapes


@pytest.fixture()
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, 300)


def test_a_plain_head_runs_a_chunk_of_positions_at_a_time_and_gives_the_same_loss(ids, monkeypatch):
    model = _llama()
    expected = _by_hand(model, ids, 64)
    monkeypatch.setattr(lm_eval, "LOGITS_AT_ONCE", 10 * VOCAB)  # chunks of 10 positions
    shapes = _heads_outputs(model)
    nll, count = lm_eval.stream_nll(model, ids, context=64, stride=64, batch_size=4)
    assert count == len(ids) - 1
    assert nll == pytest.approx(expected, rel=1e-5)
    scored = [s for s in shapes if len(s) == 2]  # the chunks; the probe's check is (1, 8, V)
    assert scored and max(s[0] for s in scored) == 10 and sum(s[0] for s in scored) == count


def test_soft_capped_logits_are_not_taken_apart_and_whole_logits_come_a_window_at_a_time(ids, monkeypatch):
    model = _softcapped()
    assert lm_eval._check_body_and_head(model, torch.from_numpy(ids[:8]).long()[None]) is None
    expected = _by_hand(model, ids, 64)
    monkeypatch.setattr(lm_eval, "LOGITS_AT_ONCE", 64 * VOCAB)  # one window's logits
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: batches.append(kw["input_ids"].shape[0]), with_kwargs=True)
    nll, count = lm_eval.stream_nll(model, ids, context=64, stride=64, batch_size=4)
    assert nll == pytest.approx(expected, rel=1e-5)
    assert count == len(ids) - 1
    assert batches and max(batches[1:]) == 1 and len(batches) - 1 == 5  # the check's probe, then 5 windows alone

