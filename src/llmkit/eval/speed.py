"""Speed and memory of a model, whatever backend runs it (`llmkit.runtime.backends`).

The measurements (prefill and decode tokens/s, time to first token, latency p50/p95 over N runs,
peak RSS, size on disk) are taken the same way for every backend: greedy generation through the
backend's `prefill` / `step` (or its one-call `generate_greedy`), timed in one window.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import torch
from numpy import percentile

from llmkit.errors import UserError
from llmkit.models.io import Model, adapter_base, is_adapter, model_size_bytes
from llmkit.runtime.backends import Backend


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


# Above this share of the machine's CPU time taken by other processes during a timing, its figures are flagged:
# on 2 cores a concurrent test run measured a 32-token decode at 1/60 of its quiet speed.
BUSY_SHARE = 0.25


class OthersCpu:
    """The share of the machine's CPU time that other processes used while this one measured (Linux: /proc/stat's
    busy time less this process's own): `with OthersCpu() as others: ...; others.share` (None where unreadable)."""

    def __enter__(self) -> OthersCpu:
        self.share: float | None = None
        self._start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy0, own0, t0 = self._start
        busy1, wall = _busy_seconds(), time.perf_counter() - t0
        if busy0 is None or busy1 is None or wall <= 0:
            return
        cores = os.cpu_count() or 1
        self.share = min(1.0, max(0.0, (busy1 - busy0 - (_own_seconds() - own0)) / (wall * cores)))


def busy_warning(share: float | None, what: str) -> str | None:
    """A one-line caution when other processes took more than BUSY_SHARE of the CPU during `what`."""
    if share is None or share <= BUSY_SHARE:
        return None
    return (f"other processes used {share:.0%} of this machine's CPU during {what}: its speed figures are likely low; "
            "measure again on a quiet machine (llmkit bench-model MODEL)")


def _busy_seconds() -> float | None:
    """CPU seconds every process has spent busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:3]) + sum(fields[5:8])  # skip idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def disk_size_bytes(model: Model) -> int:
    # the weights wherever a format keeps them: safetensors, a GGUF, an ONNX graph (and its external data file)
    size = model_size_bytes(model.path) + sum(f.stat().st_size for pattern in ("*.gguf", "*.onnx", "*.onnx.data")
                                              for f in model.path.glob(pattern))
    if is_adapter(model.path):
        size += model_size_bytes(adapter_base(model).path)
    return size


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
    with OthersCpu() as others:
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
            "ttft_ms_p50": 1000 * percentile(ttft, 50), "ttft_ms_p95": 1000 * percentile(ttft, 95),
            "end_to_end_tokens_per_s": new_tokens / statistics.median(latency),
            "latency_ms_p50": 1000 * percentile(latency, 50), "latency_ms_p95": 1000 * percentile(latency, 95),
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs, "others_cpu_share": others.share}


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
    from llmkit.runtime.backends import load_classifier_on_runtime

    clf, _, _ = load_classifier_on_runtime(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, clf.config.vocab_size, (batch_size, prompt_tokens), generator=g)
    latency = []
    with OthersCpu() as others:
        for i in range(warmup + runs):
            start = time.perf_counter()
            clf(input_ids=x)
            if i >= warmup:
                latency.append(time.perf_counter() - start)
    return {"others_cpu_share": others.share, "latency_ms_p50": 1000 * percentile(latency, 50), "latency_ms_p95": 1000 * percentile(latency, 95),
            "texts_per_s": batch_size / statistics.median(latency), "prompt_tokens": prompt_tokens, "runs": runs,
            "batch_size": batch_size}
