"""`n` > 1 on the real server: the prompt is prefilled once (`llmkit_prefill_tokens_total`), then each choice
decodes with its own sampler (seed, seed + 1, ...), so choice i is what a lone request with seed + i answers,
token for token; streams tag each choice's chunks with its index; `n` past the server's limit is a 400."""

from __future__ import annotations

import time

import openai
import pytest
import requests

from tests.serve.conftest import start_server

PROMPT = "ROMEO:\n"
PREFILL = 'llmkit_prefill_tokens_total{{model="{}"}}'


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _metrics(url: str) -> dict[str, float]:
    lines = requests.get(url + "/metrics", timeout=10).text.splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def _idle(url: str, model: str) -> float:
    """The prompt tokens prefilled so far, once nothing else (an earlier test's leftovers) is queued or running."""
    for _ in range(300):
        m = _metrics(url)
        if not m.get(f'llmkit_running_sequences{{model="{model}"}}') and not m.get(f'llmkit_queue_depth{{model="{model}"}}'):
            return m.get(PREFILL.format(model), 0.0)
        time.sleep(0.1)
    raise AssertionError("the server never went idle")


def _choices_equal_lone_requests(url: str, model: str, prefills: int = 1) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=24, temperature=1.0)
    before = _idle(url, model)
    out = client.completions.create(n=3, seed=11, **kwargs)
    prefilled = _idle(url, model) - before
    assert [c.index for c in out.choices] == [0, 1, 2]
    alone = [client.completions.create(seed=11 + i, **kwargs) for i in range(3)]
    # The tiny model's tokens are characters: equal text is equal tokens.
    assert [c.text for c in out.choices] == [a.choices[0].text for a in alone]
    assert len({c.text for c in out.choices}) > 1, "three seeds should give different samples"
    assert out.usage.prompt_tokens == alone[0].usage.prompt_tokens  # the prompt counted once
    assert out.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert prefilled == prefills * out.usage.prompt_tokens, f"the prompt should be prefilled {prefills} time(s)"


def test_three_choices_are_three_seeded_answers_from_one_prefill(server):
    _choices_equal_lone_requests(server.base_url, "tiny-lm")


def test_streamed_choices_carry_their_index_and_equal_the_whole_answer(client):
    kwargs = dict(model="tiny-lm", messages=[{"role": "user", "content": "Who is there?"}], max_tokens=20,
                  temperature=1.0, seed=5, n=3, logprobs=True)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text, roles, finishes, tokens = {}, {}, {}, {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] = text.get(ch.index, "") + (ch.delta.content or "")
            roles[ch.index] = roles.get(ch.index) or ch.delta.role
            finishes[ch.index] = ch.finish_reason or finishes.get(ch.index)
            tokens.setdefault(ch.index, []).extend(t.token for t in (ch.logprobs.content if ch.logprobs else []))
    assert [ch.index for ch in whole.choices] == [0, 1, 2]
    assert text == {ch.index: ch.message.content for ch in whole.choices}
    assert tokens == {ch.index: [t.token for t in ch.logprobs.content] for ch in whole.choices}
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert finishes == {ch.index: ch.finish_reason for ch in whole.choices}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_greedy_choices_are_identical(client):
    out = client.chat.completions.create(model="tiny-lm", messages=[{"role": "user", "content": "Speak."}],
                                         max_tokens=12, temperature=0, n=2)
    assert len(out.choices) == 2 and out.choices[0].message.content == out.choices[1].message.content


@pytest.mark.parametrize("path, n", [("/v1/completions", 0), ("/v1/completions", 9), ("/v1/chat/completions", 9),
                                     ("/v1/chat/completions", 10**9)])
def test_n_out_of_range_is_a_400_naming_n(server, path, n):
    body = {"model": "tiny-lm", "max_tokens": 2, "n": n}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "A"})
    r = requests.post(server.base_url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "n" and error["type"] == "invalid_request_error", error
    if n > 8:
        assert "limit of 8" in error["message"], error  # the default --max-n


@pytest.mark.parametrize("fmt, prefills", [("gguf", 1), ("onnx", 3)])
def test_exported_backends_give_the_same_choices(lm_workspace, serve_lm, fmt, prefills):
    """llama.cpp copies the prefilled sequence (its seq_cp); ONNX has no cache to copy and prefills each choice."""
    from llmkit.config import ExportConfig
    from llmkit.optimize.export import export
    from llmkit.registry import Registry
    from llmkit.workspace import Workspace

    ws, name = Workspace.open(lm_workspace), f"{serve_lm}-{fmt}-choices"
    export(serve_lm, ExportConfig(format=fmt, quant="f32", table=False, name=name), ws, Registry.for_workspace(ws.root))
    running, _ = start_server(lm_workspace, [name], ui=False, workers=1, max_batch=4)
    try:
        _choices_equal_lone_requests(running.url, name, prefills)
    finally:
        running.stop()
