"""Tool calling on the real server with the `openai` client and smollm2-135m: the whole flow (request → call →
tool result → final answer), a named function's arguments validating against its schema, a streamed call equal to
the whole one, a template without tools getting them as text; one-line 400s for calls that cannot be made."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests

from llmkit.serve.tools import CallStream, ToolUse
from tests.serve.conftest import start_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two whole numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 1000},
                                                    "b": {"type": "integer", "minimum": 0, "maximum": 1000}},
                   "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "system", "content": "You are a helpful assistant with tools."},
       {"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def url(lm_workspace, smollm2, serve_lm):
    running, _ = start_server(lm_workspace, ["smol=smollm2-135m", f"tiny={serve_lm}"], max_batch=4, max_queue=16,
                              max_tokens=128)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _args_valid(call, tool: dict) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def test_openai_client_round_trip_call_result_answer(client):
    first = client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                           temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    tool = {"get_weather": WEATHER, "add": ADD}[call.function.name]
    _args_valid(call, tool)
    # The client sends the assistant's message back as it came, then the tool's result.
    messages = ASK + [choice.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})}]
    final = client.chat.completions.create(model="smol", messages=messages, tools=[WEATHER, ADD], temperature=0,
                                           max_tokens=40)
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert answer.message.content.strip(), "the final answer should be text"
    # The result reached the prompt: a longer result makes a longer prompt.
    messages[-1]["content"] = json.dumps({"temperature": 18, "sky": "sunny", "wind": "light breeze from the west"})
    longer = client.chat.completions.create(model="smol", messages=messages, tools=[WEATHER, ADD], temperature=0,
                                            max_tokens=1)
    assert longer.usage.prompt_tokens > final.usage.prompt_tokens + 4


def test_named_function_arguments_follow_its_schema(client):
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "What is 12 plus 30?"}], tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0, max_tokens=60)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "add"
    args = _args_valid(call, ADD)
    assert set(args) == {"a", "b"}


def test_streamed_call_equals_the_whole_one(client):
    kwargs = dict(model="smol", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=80)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    calls, finish, empty = {}, None, 0
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            d = choice.delta
            empty += not (d.role or d.content or d.tool_calls or choice.finish_reason)
            for part in choice.delta.tool_calls or []:
                entry = calls.setdefault(part.index, {"name": "", "arguments": ""})
                entry["name"] += part.function.name or ""
                entry["arguments"] += part.function.arguments or ""
    assert finish == "tool_calls"
    assert calls == {0: {"name": whole.function.name, "arguments": whole.function.arguments}}
    assert empty == 0  # one empty {"delta": {}} per token while the call was held back


def test_a_required_call_cut_short_is_a_call_with_finish_length(client):
    # As OpenAI: the call so far (its function, arguments not valid JSON) and "length", never the JSON as text.
    kwargs = dict(model="smol", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=14)
    whole = client.chat.completions.create(**{**kwargs, "max_tokens": 80}).choices[0].message.tool_calls[0]
    cut = client.chat.completions.create(**kwargs).choices[0]
    assert cut.finish_reason == "length" and cut.message.content is None
    (call,) = cut.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments.startswith("{")
    with pytest.raises(ValueError):
        json.loads(call.function.arguments)
    assert json.loads(whole.function.arguments)  # the same request with room for the whole call parses
    streamed, finish = {"name": "", "arguments": ""}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content
            for part in choice.delta.tool_calls or []:
                streamed["name"] += part.function.name or ""
                streamed["arguments"] += part.function.arguments or ""
    assert finish == "length" and streamed == {"name": "get_weather", "arguments": call.function.arguments}


def test_template_without_tools_gets_them_as_text(client):
    # smollm2's template reads no tools: they go into the system turn, listed as JSON with the call format.
    ask = [{"role": "user", "content": "add 2 and 3"}]
    plain = client.chat.completions.create(model="smol", messages=ask, temperature=0, max_tokens=1)
    offered = client.chat.completions.create(model="smol", messages=ask, tools=[ADD], temperature=0, max_tokens=1)
    assert offered.usage.prompt_tokens > plain.usage.prompt_tokens + 60


# A Hermes-style template (as Qwen2.5's) that reads tools, tool_calls and tool results itself.
NATIVE = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else '' }}
# Tools
<tools>{% for t in tools %}
{{ t | tojson }}{% endfor %}
</tools><|im_end|>
{% endif %}{%- for m in messages %}{% if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif not (tools and m.role == 'system') %}<|im_start|>{{ m.role }}
{{ m.content or '' }}{% for c in m.tool_calls or [] %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_that_reads_tools_renders_them_itself(smollm2):
    from transformers import AutoTokenizer

    import llmkit.serve.schemas as s
    from llmkit.generate import chat_prompt
    from llmkit.serve.tools import chat_messages, tool_use

    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    tokenizer.chat_template = NATIVE
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    body = s.ChatRequest(model="smol", messages=messages, tools=[WEATHER])
    use = tool_use(tokenizer, body)
    assert use.native and use.choice == "auto"
    prompt, _ = chat_prompt(tokenizer, *chat_messages(body, use))
    assert json.dumps(WEATHER) in prompt  # the tool as the template lists it
    assert '"arguments": {"city": "Paris", "unit": "celsius"}' in prompt  # the call's arguments as an object
    assert "<tool_response>\n18 C\n</tool_response>" in prompt
    assert "You may call functions" not in prompt  # not our text rendering


BAD = [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name", "get_time"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "twice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "both constrain"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(?<=a)b"}}}}}], "tool_choice": "required"}, "tools[0].function.parameters",
     "/properties/x"),
    ({"tools": [WEATHER], "messages": ASK + [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_time", "arguments": "{}"}}]}]},
     "messages[2].tool_calls[0].function.name", "get_time"),
    ({"tools": [WEATHER], "messages": ASK + [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "Paris"}}]}]},
     "messages[2].tool_calls[0].function.arguments", "JSON object"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "nope", "content": "18"}]}, "messages[2].tool_call_id",
     "no earlier"),
    # an array schema was decoded as the call's "arguments": a JSON array, which no client parses as keyword arguments
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
      "tool_choice": "required"}, "tools[0].function.parameters", 'type must be "object" (it is "array")'),
]


@pytest.mark.parametrize(("extra", "param", "says"), BAD, ids=[b[1] + "-" + b[2] for b in BAD])
def test_calls_that_cannot_be_made_are_400(url, extra, param, says):
    body = {"model": "smol", "messages": ASK, "max_tokens": 8, **extra}
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert "\n" not in error["message"]


# --- the answer's side, without a server: what "auto" turns into calls -------------------------------------

FUNCS = {"get_weather": WEATHER["function"], "add": ADD["function"]}


@pytest.mark.parametrize(("text", "content", "calls"), [
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', None, [("add", {"a": 1, "b": 2})]),
    ('Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', "Let me add.",
     [("add", {"a": 1, "b": 2})]),
    ('{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}', None,
     [("get_weather", {"city": "Oslo", "unit": "celsius"})]),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call><tool_call>{"name": "get_weather", '
     '"arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>', None, [("add", {"a": 1}), ("get_weather", {"city": "Rome"})]),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', None, []),  # an unknown function stays text
    ('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>', None, []),  # broken JSON stays text
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', None, []),  # arguments must be a JSON object
    ('<tool_call>{"name": "add", "arguments": "[1, 2]"}</tool_call>', None, []),  # in a string too
    ("The answer is 3.", None, []),
])
def test_auto_answers_become_calls_only_when_well_formed(text, content, calls):
    use = ToolUse(FUNCS, "auto", native=True)
    got_content, got = use.parse(text)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in got] == calls
    assert got_content == (content if calls else text)


def test_streamed_auto_text_goes_out_at_once_and_a_call_is_held():
    use = ToolUse(FUNCS, "auto", native=True)
    stream = CallStream(use)
    pieces = ["The weather ", "is fine", " <tool", "_call>{\"name\": \"add\", ", "\"arguments\": {}}</tool_call>"]
    sent = [stream.push(p) for p in pieces]
    assert "".join(sent) == "The weather is fine "  # the tag's start is held until it is known to be a call
    rest, calls = stream.finish()
    assert rest is None and [c.function.name for c in calls] == ["add"]
    plain = CallStream(use)
    sent = [plain.push(p) for p in ["a < b", " and <tool", "bar> done"]]
    rest, calls = plain.finish()
    assert "".join(sent) + (rest or "") == "a < b and <toolbar> done" and calls == []


@pytest.mark.parametrize(("choice", "text", "name", "arguments"), [
    ("required", '{"name": "add", "arguments": {"a": 1', "add", '{"a": 1'),
    ("required", '{"name": "get_wea', "get_weather", ""),  # the only function whose name starts so
    ("required", '{"name": "', None, None),  # which function is not known yet: the text as it is
    ("add", '{"na', "add", ""),  # a named function is known from the start
    ("add", '{"name": "add", "arguments": ', "add", ""),
])
def test_a_required_call_cut_short_stays_a_call(choice, text, name, arguments):
    content, calls = ToolUse(FUNCS, choice, native=True).parse(text)
    if name is None:
        assert (content, calls) == (text, [])
    else:
        assert content is None and [(c.function.name, c.function.arguments) for c in calls] == [(name, arguments)]
