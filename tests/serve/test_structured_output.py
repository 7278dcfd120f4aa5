"""Structured output on the real server with the `openai` client: every strict schema of the test set gives an
answer that parses and validates, from smollm2-135m on torch and on llama.cpp (its GGUF export), requests
decoded together in one batch; choices and regexes; streaming; one-line 400s for what cannot be enforced."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
import requests

from llmkit.config import ExportConfig
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.runtime.json_schemas import SCHEMAS
from tests.serve.conftest import start_server

ENFORCEABLE = [(name, schema) for name, schema in SCHEMAS if name != "unique_list"]  # uniqueItems: refused, tested below
PROMPT = "Reply with one JSON value that fits the schema named '{name}'. Keep strings short."


@pytest.fixture(scope="module")
def urls(lm_workspace, smollm2):
    ws = Workspace.open(lm_workspace)
    export("smollm2-135m", ExportConfig(quant="q8_0", table=False, name="structured-smol-gguf"), ws,
           Registry.for_workspace(ws.root))
    running, _ = start_server(lm_workspace, ["smol=smollm2-135m", "smol-gguf=structured-smol-gguf"], max_batch=8,
                              max_queue=128, max_tokens=256)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def client(urls) -> openai.OpenAI:
    return openai.OpenAI(base_url=urls + "/v1", api_key="unused", max_retries=0, timeout=300)


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
