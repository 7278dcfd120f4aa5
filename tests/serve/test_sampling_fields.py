"""OpenAI's request fields on the real server with the `openai` client, smollm2-135m on torch and on llama.cpp (its
GGUF export): logit_bias, presence_penalty and frequency_penalty change what greedy decoding picks (they were
accepted and ignored); out-of-range values, fields the server cannot honour (best_of above n, a suffix), messages
without content and tools whose parameters are not a JSON Schema are 400s naming the field."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from llmkit.models.io import load_tokenizer_for
from tests.serve.conftest import openai_client, smol_on_both_backends

USER = [{"role": "user", "content": "hi"}]
NONSENSE = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "city": {"type": "nonsense"}}}}}


@pytest.fixture(scope="module")
def url(lm_workspace, smol_q8):
    with smol_on_both_backends(lm_workspace, smol_q8, max_batch=4, max_queue=32, max_tokens=64) as url:
        yield url


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai_client(url)


@pytest.fixture(scope="module")
def tok(smollm2):
    return load_tokenizer_for(smollm2)


def _greedy(client, model: str, prompt: str, tokens: int = 12, **extra) -> str:
    return client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=tokens,
                                     extra_body=extra).choices[0].text


@pytest.mark.parametrize("model", ["smol", "smol-gguf"])
def test_logit_bias_forces_and_bans_a_token(client, tok, model):
    (banana,) = tok.encode(" banana")
    forced = _greedy(client, model, "The capital of France is", 4, logit_bias={str(banana): 100})
    assert forced == " banana" * 4, forced
    free = _greedy(client, model, "The capital of France is", 4)
    first = tok.encode(free)[0]
    banned = _greedy(client, model, "The capital of France is", 4, logit_bias={str(first): -100})
    assert tok.encode(banned)[0] != first, (free, banned)


@pytest.mark.parametrize("model", ["smol", "smol-gguf"])
@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_penalties_break_a_greedy_repetition(client, tok, model, penalty):
    prompt = "1 2 3 1 2 3 1 2 3 1 2 3"
    plain = _greedy(client, model, prompt, 12)
    assert plain.count("1 2 3") >= 2, plain  # greedy, it goes on repeating
    penalised = _greedy(client, model, prompt, 12, **{penalty: 2.0})
    # The tokens it generated are pushed down (the prompt's are not: OpenAI's penalties count the answer's tokens).
    assert penalised.count("1 2 3") < plain.count("1 2 3"), (plain, penalised)


BAD = [
    ("/v1/chat/completions", {"frequency_penalty": 5}, "frequency_penalty"),  # was accepted, and ignored
    ("/v1/chat/completions", {"presence_penalty": -2.5}, "presence_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"abc": 5}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"12": 150}}, "logit_bias.12"),
    ("/v1/chat/completions", {"logit_bias": {"99999999": 1}}, "logit_bias"),  # not a token of the model
    ("/v1/chat/completions", {"n": 0}, "n"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"best_of": 3}, "best_of"),  # was dropped: one choice came back
    ("/v1/completions", {"suffix": "the end"}, "suffix"),  # was dropped
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),  # was an empty turn
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": None}, *USER]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [*USER, {"role": "assistant"}]}, "messages[1].content"),
    # not a JSON Schema: accepted under auto, and under required named an internal wrapper's path
    ("/v1/chat/completions", {"tools": [NONSENSE]}, "tools[0].function.parameters"),
    ("/v1/chat/completions", {"tools": [NONSENSE], "tool_choice": "required"}, "tools[0].function.parameters"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": "5"}}}}}},
     "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "查询天气"}}]},
     "tools[0].function.name"),
]


@pytest.mark.parametrize("path, extra, param", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(url, path, extra, param):
    body = {"model": "smol", "max_tokens": 3, **({"prompt": "hi"} if "chat" not in path else {"messages": USER}), **extra}
    r = requests.post(url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert "\n" not in error["message"] and error["type"] == "invalid_request_error", error
    if "tools" in extra and param.endswith("parameters"):
        assert "at /properties/city/type" in error["message"] and "arguments" not in error["message"], error
    if param.endswith("function.name"):  # it was pydantic's "String should match pattern '^[A-Za-z0-9_.\\-]+$'"
        assert "names use ASCII letters, digits, _ . and - (OpenAI's rule)" in error["message"], error


def test_what_openai_allows_still_works(client):
    """Content may be null on an assistant message with tool calls; best_of equal to n and an empty suffix are
    what the server does anyway."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    reply = client.chat.completions.create(model="smol", max_tokens=3, tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}}}], messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}])
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    done = client.completions.create(model="smol", prompt="hi", max_tokens=3, n=2, best_of=2, suffix="",
                                     frequency_penalty=-2, presence_penalty=2)
    assert len(done.choices) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_logprobs_of_chinese_name_partial_tokens_by_their_bytes_and_count_offsets_in_characters(url, stream):
    # a character over two byte-level tokens: both showed '\ufffd', so as top_logprobs keys one replaced the other, and
    # text_offset counted each '\ufffd' as a character of a text that holds none
    body = {"model": "smol", "prompt": "中国的首都是", "max_tokens": 8, "temperature": 0, "logprobs": 2, "stream": stream}
    r = requests.post(url + "/v1/completions", json=body, timeout=60, stream=stream)
    assert r.status_code == 200, r.text
    if stream:
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: {")]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        parts = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
        lp = {k: [v for p in parts for v in p[k]] for k in ("tokens", "text_offset", "top_logprobs")}
    else:
        choice = r.json()["choices"][0]
        text, lp = choice["text"], choice["logprobs"]
    assert not any("\ufffd" in t for t in lp["tokens"]) and any(t.startswith("bytes:\\x") for t in lp["tokens"]), lp
    assert all(len(top) >= 2 for top in lp["top_logprobs"])  # no two partial tokens under one key
    raw = b"".join(bytes(int(h, 16) for h in t[6:].split("\\x")[1:]) if t.startswith("bytes:") else t.encode()
                   for t in lp["tokens"])
    assert raw.decode("utf-8", errors="ignore") == text
    expected = [len(b"".join(bytes(int(h, 16) for h in t[6:].split("\\x")[1:]) if t.startswith("bytes:") else t.encode()
                             for t in lp["tokens"][:i]).decode("utf-8", errors="ignore")) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == expected and max(expected) <= len(text)
