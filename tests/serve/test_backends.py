"""The llama.cpp and ONNX backends behind the same API: a batch of one per worker, requests queued."""

from __future__ import annotations

import concurrent.futures as cf

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


def _greedy(url: str, model: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0).choices[0].text


@pytest.mark.slow
@pytest.mark.parametrize("fmt, backend", [("gguf", "llama.cpp"), ("onnx", "onnx")])
def test_exported_model_serves_like_torch(lm_workspace, serve_lm, server, fmt, backend):
    name = _export(lm_workspace, serve_lm, fmt)
    running, _ = start_server(lm_workspace, [name], ui=False, workers=2)
    try:
        card = requests.get(running.url + "/v1/models", timeout=10).json()["data"][0]
        assert (card["id"], card["backend"], card["kind"]) == (name, backend, "causal")
        prompts = ["ROMEO:\n", "KING:\n", "First Citizen:\n", "JULIET:\n"]
        expected = [_greedy(server.base_url, "tiny-lm", p) for p in prompts]
        with cf.ThreadPoolExecutor(4) as pool:  # more requests than workers: they queue
            got = list(pool.map(lambda p: _greedy(running.url, name, p), prompts))
        assert got == expected
    finally:
        running.stop()


def test_explicit_backend_that_cannot_load_the_model_is_a_clear_error(lm_workspace, serve_lm):
    from llmkit.errors import UserError

    with pytest.raises(UserError, match="not a GGUF export"):
        start_server(lm_workspace, [serve_lm], backend="llamacpp")
