"""Structured output on the real server with the `openai` client: every strict schema of the test set gives an
answer that parses and validates, from smollm2-135m on torch and on llama.cpp (its GGUF export), requests
decoded together in one batch; choices and regexes; streaming; one-line 400s for what cannot be enforced."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
import requests

from tests.runtime.json_schemas import SCHEMAS
from tests.serve.conftest import openai_client, smol_on_both_backends

ENFORCEABLE = [(name, schema) for name, schema in SCHEMAS if name != "unique_list"]  # uniqueItems: refused, tested below
PROMPT = "Reply with one JSON value that fits the schema named '{name}'. Keep strings short."


@pytest.fixture(scope="module")
def urls(lm_workspace, smol_q8):
    with smol_on_both_backends(lm_workspace, smol_q8, max_batch=8, max_queue=128, max_tokens=256) as url:
        yield url


@pytest.fixture(scope="module")
def client(urls) -> openai.OpenAI:
    return openai_client(urls)


def _ask(client, model: str, name: str, schema: dict):
    reply = client.chat.completions.create(
        model=model, temperature=0, max_tokens=200, messages=[{"role": "user", "content": PROMPT.format(name=name)}],
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    return reply.choices[0]


@pytest.mark.parametrize("model", ["smol", "smol-gguf"])
def test_every_strict_schema_gives_json_that_validates(client, model):
    with ThreadPoolExecutor(8) as pool:  # eight at a time: constrained rows share the engine's batch
        choices = list(pool.map(lambda item: _ask(client, model, *item), ENFORCEABLE))
    bad = []
    for (name, schema), choice in zip(ENFORCEABLE, choices, strict=True):
        try:
            jsonschema.validate(json.loads(choice.message.content), schema, format_checker=jsonschema.FormatChecker())
            assert choice.finish_reason == "stop"
        except (ValueError, AssertionError, jsonschema.ValidationError) as err:
            bad.append(f"{name}: {choice.message.content!r} ({type(err).__name__})")
    assert not bad, bad
    assert len(choices) >= 50


def test_without_a_format_the_same_request_is_free_text(client):
    """The check above can fail: unconstrained, the model does not produce valid JSON for these schemas."""
    def free(name: str) -> str:
        return client.chat.completions.create(model="smol", temperature=0, max_tokens=60,
                                              messages=[{"role": "user", "content": PROMPT.format(name=name)}]
                                              ).choices[0].message.content

    with ThreadPoolExecutor(6) as pool:  # decoded together, like the constrained requests above
        texts = list(pool.map(free, [name for name, _ in ENFORCEABLE[:6]]))
    invalid = 0
    for (_, schema), text in zip(ENFORCEABLE[:6], texts, strict=True):
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError):
            invalid += 1
    assert invalid >= 3


@pytest.mark.parametrize("model", ["smol", "smol-gguf"])
def test_choice_and_regex_on_both_endpoints(client, model):
    options = ["yes", "no", "it depends"]
    chat = client.chat.completions.create(model=model, temperature=0, max_tokens=10, extra_body={"guided_choice": options},
                                          messages=[{"role": "user", "content": "Is the sky blue?"}])
    assert chat.choices[0].message.content in options
    done = client.completions.create(model=model, prompt="The year the war ended was", temperature=0.7, seed=3,
                                     max_tokens=12, extra_body={"guided_regex": "19[0-9]{2}"})
    assert done.choices[0].text.isdigit() and len(done.choices[0].text) == 4 and done.choices[0].text.startswith("19")


def test_schema_streams_and_json_object_parses(client):
    schema = dict(SCHEMAS)[ENFORCEABLE[0][0]]
    stream = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=200, stream=True, messages=[{"role": "user", "content": "A person?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}})
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema.validate(json.loads(text), schema)
    assert chunks[-1].choices[0].finish_reason == "stop"
    reply = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=100, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply with a JSON object whose key 'ok' is true."}])
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_what_cannot_be_enforced_is_a_400_naming_the_part(urls):
    unique = dict(SCHEMAS)["unique_list"]
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": unique}}},
         "response_format.json_schema.schema", "uniqueItems"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "(unclosed"),
        ({"response_format": {"type": "json_schema"}}, None, "json_schema"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, None, "send one of them"),
    ]
    for extra, param, says in cases:
        r = requests.post(urls + "/v1/chat/completions", timeout=60, json={
            "model": "smol", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra})
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert says in error["message"] and "\n" not in error["message"], error
        if param:
            assert error["param"] == param, error


RECURSIVE = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}  # no finite value: no end


def _deep_pattern(length: int) -> dict:
    """Passes admission (a short free string first) but trips the engine's lexer limit once the answer reaches the
    pattern, a few tokens into the answer."""
    return {"type": "object", "properties": {"b": {"type": "string", "maxLength": length},
                                             "a": {"type": "string", "pattern": "^a{1000000}$"}}, "required": ["b", "a"]}


def _schema_format(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


@pytest.mark.parametrize("model", ["smol", "smol-gguf"])
def test_a_grammar_failing_midway_ends_only_its_own_request(urls, model, caplog):
    """One request's grammar hitting an engine limit mid-answer failed every request of that engine step with a 503
    (and a traceback in the log): now it gets a one-line 400 of its own and the others finish untouched."""
    def post(extra: dict, tokens: int) -> requests.Response:
        return requests.post(urls + "/v1/chat/completions", timeout=300, json={
            "model": model, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a cat."}], **extra})

    with ThreadPoolExecutor(4) as pool:
        normal = [pool.submit(post, {"ignore_eos": True}, 60) for _ in range(3)]
        time.sleep(1)  # the three are decoding when the fourth joins their steps
        # A length of its own per model: a grammar that failed once is refused at admission after (tested below).
        bad = pool.submit(post, _schema_format(_deep_pattern(3 if model == "smol" else 4)), 30)
        replies = [f.result() for f in normal]
        failed = bad.result()
    for r in replies:
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 60
    assert failed.status_code == 400, failed.text
    error = failed.json()["error"]
    assert error["param"] == "response_format.json_schema.schema" and error["code"] == "invalid_grammar", error
    assert "too many expressions" in error["message"] and "\n" not in error["message"] and "<state>" not in error["message"]
    assert not [rec for rec in caplog.records if rec.exc_info], "a client's schema logged a traceback"


def test_a_stream_whose_grammar_fails_midway_gets_an_error_event(client):
    stream = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=30, stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_body=_schema_format(_deep_pattern(2)))
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text.startswith('{"b": "'), text  # the answer had started: the failure came as an event, not a status
    assert "too many expressions" in caught.value.message and "\n" not in caught.value.message


@pytest.mark.parametrize("extra, param, says", [
    (_schema_format(RECURSIVE), "response_format.json_schema.schema", "($ref) must leave the reference optional"),
    ({"guided_regex": "a{1000000}"}, "guided_regex", "too large"),
    ({"guided_json": _deep_pattern(5)}, "guided_json", None),  # the limit is hit on its first use, then refused
])
def test_a_grammar_over_the_engines_limits_is_a_400_at_admission(urls, extra, param, says):
    """These were a 503 with a multi-line parser dump (and every request in the step failing with it), and a 200 with
    an empty answer that did not match the regex."""
    for attempt in range(2):
        r = requests.post(urls + "/v1/chat/completions", timeout=120, json={
            "model": "smol", "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": "hi"}],
            **extra})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["code"] == "invalid_grammar", error
        assert "\n" not in error["message"] and len(error["message"]) < 400, error
        if says is not None or attempt == 1:
            assert (says or "too large or complex to enforce") in error["message"], error
            break
