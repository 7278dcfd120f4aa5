"""measure_lm on a backend whose generation is one call (as Hugging Face `generate` is in bench/compress.py)."""

from __future__ import annotations

import statistics
import time

import pytest

from llmkit.eval.speed import measure_lm
from llmkit.runtime.backends import TorchBackend


class OneCallTorch(TorchBackend):
    """llmkit's decode loop behind the one-call interface, noting its own first-token and end times."""

    def __init__(self, model):
        super().__init__(model)
        self.calls, self.entry_to_first, self.first_to_end = [], [], []

    def prefill(self, ids, capacity):
        raise AssertionError("measure_lm called prefill on a backend that generates in one call")

    def generate_greedy(self, ids: list[int], new_tokens: int) -> float:
        entry = time.perf_counter()
        state, logits = super().prefill(ids, len(ids) + new_tokens)
        token = int(logits.argmax())
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(self.step(state, token).argmax())
        self.calls.append((len(ids), new_tokens))
        self.entry_to_first.append(first - entry)
        self.first_to_end.append(time.perf_counter() - first)
        return first


def test_measure_lm_times_a_one_call_backend_from_the_first_token_it_reports(tiny_model):
    backend = OneCallTorch(tiny_model)
    m = measure_lm(backend, prompt_tokens=8, new_tokens=6, runs=3, warmup=1)
    assert backend.calls == [(8, 6)] * 4  # the untimed run, then the timed ones, each through generate_greedy
    # measure_lm's windows contain the backend's own: the decode window opens at the first-token time it returns.
    assert m["decode_tokens_per_s"] <= 5 / statistics.median(backend.first_to_end[1:])
    assert m["ttft_ms_p50"] >= 1000 * statistics.median(backend.entry_to_first[1:])
    assert m["end_to_end_tokens_per_s"] == pytest.approx(6 / (m["latency_ms_p50"] / 1000))


def test_measure_lm_reports_the_end_to_end_rate_of_a_stepwise_backend(tiny_model):
    m = measure_lm(TorchBackend(tiny_model), prompt_tokens=8, new_tokens=6, runs=3, warmup=1)
    # All new tokens over the median whole call (prefill included), beside the decode-only rate.
    assert m["end_to_end_tokens_per_s"] == pytest.approx(6 / (m["latency_ms_p50"] / 1000))
