"""The llama.cpp and ONNX backends behind the same API: llama.cpp batches the running requests in one
context (sequence ids), ONNX runs a batch of one per worker with requests queued."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import openai
import pytest
import requests

from llmkit.config import ExportConfig
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.serve.conftest import start_server


def _export(lm_workspace, serve_lm, fmt: str) -> str:
    from llmkit.optimize.export import export

    ws = Workspace.open(lm_workspace)
    name = f"{serve_lm}-{fmt}"
    export(serve_lm, ExportConfig(format=fmt, quant="f32", table=False, name=name), ws, Registry.for_workspace(ws.root))
    return name


def _greedy(url: str, model: str, prompt: str, tokens: int = 20, start: threading.Barrier | None = None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    if start is not None:
        start.wait(timeout=60)  # every client made before any request leaves: they arrive together
    return client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0).choices[0].text


def _metric(url: str, series: str) -> float:
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt, backend, workers", [("gguf", "llama.cpp", 1), ("onnx", "onnx", 2)])
def test_exported_model_serves_like_torch(lm_workspace, serve_lm, server, fmt, backend, workers):
    name = _export(lm_workspace, serve_lm, fmt)
    running, _ = start_server(lm_workspace, [name], ui=False, workers=workers)
    try:
        card = requests.get(running.url + "/v1/models", timeout=10).json()["data"][0]
        assert (card["id"], card["backend"], card["kind"]) == (name, backend, "causal")
        prompts = ["ROMEO:\n", "KING:\n", "First Citizen:\n", "JULIET:\n", "QUEEN:\n", "BRUTUS:\n", "ALL:\n", "MENENIUS:\n"]
        expected = [_greedy(server.base_url, "tiny-lm", p) for p in prompts]
        with cf.ThreadPoolExecutor(len(prompts)) as pool:  # more requests than workers
            got = list(pool.map(lambda p: _greedy(running.url, name, p), prompts))
        assert got == expected
        steps = _metric(running.url, f'llmkit_batch_size_count{{model="{name}"}}')
        seqs = _metric(running.url, f'llmkit_batch_size_sum{{model="{name}"}}')
        if backend == "llama.cpp":  # one context, many sequences: concurrent requests share decode steps
            # Answers long enough to overlap however loaded the machine: 20 tokens of the tiny model take
            # milliseconds, less than a busy machine takes to send the next request.
            start = threading.Barrier(len(prompts))
            with cf.ThreadPoolExecutor(len(prompts)) as pool:
                list(pool.map(lambda p: _greedy(running.url, name, p, 160, start), prompts))
            steps = _metric(running.url, f'llmkit_batch_size_count{{model="{name}"}}') - steps
            seqs = _metric(running.url, f'llmkit_batch_size_sum{{model="{name}"}}') - seqs
            assert seqs / steps > 1.5, f"llama.cpp did not batch: {seqs} sequence-steps in {steps} steps"
        else:
            assert seqs == steps  # a batch of one
    finally:
        running.stop()


def test_explicit_backend_that_cannot_load_the_model_is_a_clear_error(lm_workspace, serve_lm):
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="not a GGUF export"):
        start_server(lm_workspace, [serve_lm], backend="llamacpp")
