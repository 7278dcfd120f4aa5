"""What bounds one explanation: a deadline checked between forward passes (every method stops), forward
passes of at most `batch_tokens` positions (IG steps chunked to fit, same result), the work counted before
it runs, and Kernel SHAP on a single free token (exact, where captum's estimate was NaN)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import ExplainConfig
from llmkit.explain import OutOfTime, explain_loaded, load_for_explain
from llmkit.explain.budget import explain_work, explained_tokens
from llmkit.registry import Registry


@pytest.fixture(scope="module")
def lm(lm_workspace: Path, tiny_model):
    return load_for_explain("tiny-lm", Registry.for_workspace(lm_workspace))


def _run(loaded, text: str, deadline=None, batch_tokens=0, **cfg):
    model, tokenizer, kind, labels, max_length, ref = loaded
    return explain_loaded(model, tokenizer, kind, text, ExplainConfig(**cfg), labels=labels, max_length=max_length,
                          name=ref, deadline=deadline, batch_tokens=batch_tokens)


@pytest.mark.parametrize("method", ["ig", "occlusion", "shap", "attention"])
def test_a_deadline_that_has_passed_stops_every_method(lm, method):
    with pytest.raises(OutOfTime):
        _run(lm, "ROMEO: I will", deadline=time.perf_counter() - 1, method=method, steps=10)


def test_integrated_gradients_in_chunks_equals_one_batch(lm):
    whole = _run(lm, "ROMEO: I will", method="ig", steps=20)
    chunked = _run(lm, "ROMEO: I will", batch_tokens=30, method="ig", steps=20)  # 30 // 14 tokens = 2 steps a pass
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-4, atol=1e-6)
    assert chunked.aopc == pytest.approx(whole.aopc, abs=1e-6)


def test_shap_on_one_free_token_is_exact(lm):
    shap = _run(lm, "a", method="shap")
    occlusion = _run(lm, "a", method="occlusion")
    assert shap.samples == 0 and np.isfinite(shap.scores).all()
    assert shap.scores[1] == pytest.approx(occlusion.scores[1], rel=1e-5, abs=1e-7)


def test_work_is_rows_times_tokens(lm):
    model, tokenizer, kind, *_ = lm
    assert explained_tokens(tokenizer, kind, "ROMEO: I will", None, 0) == (14, 0)  # BOS + 13 characters
    assert explained_tokens(tokenizer, kind, "ROMEO:", " not", 0) == (7, 4)
    assert explain_work("ig", 14, steps=50) == 700
    assert explain_work("occlusion", 14) == 14 * 14
    assert explain_work("shap", 14) == (200 + 1) * 14
    assert explain_work("attention", 7, 4) == 11
