"""An application's strict answers and tool calls carry the keys its schema lists, as OpenAI's strict mode and vLLM
give them: an object schema that says nothing of other keys is closed to them (`structured.closed`)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llmkit.serve.structured import closed
from tests.serve.conftest import openai_client, start_server

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}


@pytest.fixture(scope="module")
def client(lm_workspace, smollm2):
    running, _ = start_server(lm_workspace, ["smol=smollm2-135m"], max_batch=4, max_queue=16, max_tokens=128)
    yield openai_client(running.url)
    running.stop()


def test_a_strict_answer_has_only_the_listed_keys(client):
    # Open, smollm2 answered {"city": "Oslo", "weather": {"temperature": 25, ...}} under strict: true.
    out = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Weather in Oslo as JSON"}], temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}})
    answer = json.loads(out.choices[0].message.content)
    jsonschema.validate(answer, CITY)
    assert set(answer) == {"city"}, answer


def test_a_named_tool_call_has_only_the_listed_arguments(client):
    # Open, the call ran to max_tokens: {"city": "Oslo", "unit": "celsius", "unit_type": "string", "description": "...
    out = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER, ADD], temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=80)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    args = json.loads(choice.message.tool_calls[0].function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert set(args) <= {"city", "unit"}, args


def test_closing_leaves_what_the_schema_says_and_schemas_that_combine_objects():
    nested = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                                               "free": {"type": "object", "additionalProperties": True,
                                                        "properties": {"c": {}}}}}
    out = closed(nested)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["free"]["additionalProperties"] is True
    combined = {"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}
    assert closed(combined) == combined  # closing either part would forbid the other's key
    beside = {"type": "object", "properties": {"a": {}}, "anyOf": [{"properties": {"b": {}}}, {"required": ["a"]}]}
    assert closed(beside) == beside


TWO_CALLS = (r'<tool_call>\n\{"name": "add", "arguments": \{"a": 1, "b": 2\}\}\n</tool_call>\n'
             r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Oslo"\}\}\n</tool_call>')


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_keeps_the_first_call_only(client, stream):
    # The answer is held to two calls (guided_regex) under tool_choice auto; with parallel_tool_calls false OpenAI
    # returns at most one call and vLLM keeps the first: both came back here.
    ask = dict(model="smol", messages=[{"role": "user", "content": "Add 1 and 2, and the weather in Oslo?"}],
               tools=[WEATHER, ADD], max_tokens=80, extra_body={"guided_regex": TWO_CALLS})
    calls = {}
    for parallel in (True, False):
        if not stream:
            choice = client.chat.completions.create(parallel_tool_calls=parallel, **ask).choices[0]
            got = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
            finish = choice.finish_reason
        else:  # deltas assembled by index, as the openai SDK's docs show
            parts, finish = {}, None
            for chunk in client.chat.completions.create(parallel_tool_calls=parallel, stream=True, **ask):
                for d in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                    name, args = parts.get(d.index, ("", ""))
                    parts[d.index] = (name + (d.function.name or ""), args + (d.function.arguments or ""))
                finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            got = [parts[i] for i in sorted(parts)]
        assert finish == "tool_calls"
        calls[parallel] = got
    assert calls[True] == [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Oslo"}')]
    assert calls[False] == calls[True][:1]
