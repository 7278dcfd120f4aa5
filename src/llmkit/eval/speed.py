"""Speed and memory of a model behind one backend interface.

A backend loads a model and exposes `prefill(ids) -> (state, logits)` and `step(state, token) ->
logits`; the measurements (prefill and decode tokens/s, time to first token, latency p50/p95 over N
runs, peak RSS, size on disk) are the same whatever runs underneath. The PyTorch backend is built
in; quantized, ONNX and GGUF backends register themselves with `register_backend`.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from llmkit.errors import UserError
from llmkit.models.io import Model, adapter_base, is_adapter, model_size_bytes


class Backend(Protocol):
    name: str
    vocab_size: int
    max_len: int | None

    def prefill(self, ids: list[int], capacity: int) -> tuple[Any, torch.Tensor]: ...

    def step(self, state: Any, token: int) -> torch.Tensor: ...

    # A runtime whose generation is one call (Hugging Face `generate`) defines instead
    # `generate_greedy(ids, new_tokens) -> float`: it generates and returns the perf_counter time of its first new
    # token, so its prefill and decode are timed in the same window as everyone else's.


class TorchBackend:
    """Any causal LM llmkit can load, on llmkit's decode loop (KV cache; the fast Llama path when it applies)."""

    name = "torch"

    def __init__(self, model: Model):
        from llmkit.generate import get_decoder
        from llmkit.models.io import load_causal_lm

        self.lm, self.tokenizer = load_causal_lm(model)
        self.decoder = get_decoder(self.lm)
        self.vocab_size = self.lm.config.vocab_size
        self.max_len = self.decoder.max_len

    def prefill(self, ids: list[int], capacity: int):
        return self.decoder.prefill(ids, capacity=capacity)

    def step(self, state, token: int) -> torch.Tensor:
        return self.decoder.step([state], [token])[0]


def _llama_cpp(model: Model) -> Backend:
    from llmkit.optimize.llama_cpp_backend import LlamaCppBackend

    return LlamaCppBackend(model)


def _onnx(model: Model) -> Backend:
    from llmkit.optimize.export_onnx import OnnxBackend

    return OnnxBackend(model)


BACKENDS: dict[str, Callable[[Model], Backend]] = {"torch": TorchBackend, "llama.cpp": _llama_cpp, "onnx": _onnx}


def register_backend(name: str, factory: Callable[[Model], Backend]) -> None:
    BACKENDS[name] = factory


def load_backend(name: str, model: Model) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'; backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](model)


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def disk_size_bytes(model: Model) -> int:
    size = model_size_bytes(model.path) + sum(f.stat().st_size for f in model.path.glob("*.gguf"))
    if is_adapter(model.path):
        size += model_size_bytes(adapter_base(model).path)
    return size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@torch.no_grad()
def measure_lm(backend: Backend, prompt_tokens: int, new_tokens: int, runs: int, warmup: int = 1, seed: int = 0,
               progress=None) -> dict[str, float]:
    """Greedy generation of new_tokens after a prompt_tokens prompt, `runs` times (after `warmup` untimed runs)."""
    if backend.max_len and prompt_tokens + new_tokens > backend.max_len:
        raise UserError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's context of "
                        f"{backend.max_len}; lower --prompt-tokens or --new-tokens")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backend.vocab_size, (prompt_tokens,), generator=g).tolist()
    prefill_s, decode_s, ttft, latency = [], [], [], []
    task = progress.add_task("bench-model", total=warmup + runs) if progress is not None else None
    for i in range(warmup + runs):
        start, first, end = _timed_generation(backend, ids, new_tokens)
        if i >= warmup:
            prefill_s.append(first - start)
            decode_s.append(end - first)
            ttft.append(first - start)
            latency.append(end - start)
        if task is not None:
            progress.advance(task)
    decode_tokens = max(new_tokens - 1, 1)
    return {"prefill_tokens_per_s": prompt_tokens / statistics.median(prefill_s),
            "decode_tokens_per_s": decode_tokens / statistics.median(decode_s),
            "ttft_ms_p50": 1000 * percentile(ttft, 0.5), "ttft_ms_p95": 1000 * percentile(ttft, 0.95),
            "end_to_end_tokens_per_s": new_tokens / statistics.median(latency),
            "latency_ms_p50": 1000 * percentile(latency, 0.5), "latency_ms_p95": 1000 * percentile(latency, 0.95),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs}


def _timed_generation(backend: Backend, ids: list[int], new_tokens: int) -> tuple[float, float, float]:
    """Start, first-token and end times of one greedy generation of new_tokens after ids."""
    start = time.perf_counter()
    if hasattr(backend, "generate_greedy"):
        first = backend.generate_greedy(ids, new_tokens)
    else:
        state, logits = backend.prefill(ids, len(ids) + new_tokens)
        token = int(logits.argmax())
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(backend.step(state, token).argmax())
    return start, first, time.perf_counter()


@torch.no_grad()
def measure_classifier(model: Model, prompt_tokens: int, runs: int, warmup: int = 1, batch_size: int = 1) -> dict[str, float]:
    """Forward latency of a classifier on inputs of prompt_tokens tokens."""
    from llmkit.models.io import load_classifier

    clf, _, _ = load_classifier(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, clf.config.vocab_size, (batch_size, prompt_tokens), generator=g)
    latency = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        clf(input_ids=x)
        if i >= warmup:
            latency.append(time.perf_counter() - start)
    return {"latency_ms_p50": 1000 * percentile(latency, 0.5), "latency_ms_p95": 1000 * percentile(latency, 0.95),
            "texts_per_s": batch_size / statistics.median(latency), "prompt_tokens": prompt_tokens, "runs": runs,
            "batch_size": batch_size}
