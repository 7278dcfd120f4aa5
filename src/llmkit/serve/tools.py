"""Tool calling: the request's tools into the prompt, a required call under a grammar, calls out of the answer.

A model whose chat template reads `tools` (Qwen2.5/3, Llama 3.1+, Mistral, Hermes, SmolLM3...) gets the tools
and the conversation's calls and results rendered by that template, so it sees them as it was trained to.
Any other model gets them as text in the system turn, with the Hermes call format (`<tool_call>{json}</tool_call>`)
that most open models and parsers share, results as `<tool_response>` user turns.

When a call is required (`tool_choice` "required" or a named function) the answer is decoded under a JSON
schema — `{"name": <one of the functions>, "arguments": <that function's parameters>}` — so the call parses and
its arguments validate whatever the model. Under "auto" the model chooses; a well-formed call to a known
function in its answer (Hermes tags, or a bare JSON call as Llama 3 writes them) becomes `tool_calls`, and
anything else stays text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

import llmkit.serve.schemas as s
from llmkit.serve.errors import ApiError
from llmkit.serve.structured import check_schema, closed, requested
from llmkit.serve.tool_schemas import FunctionCall, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The grammar of a required call writes its name first, then its arguments (ToolUse.call_schema)
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)')
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)


@dataclass
class ToolUse:
    """What a chat request asks of tools, checked against the request."""

    functions: dict[str, dict]  # name -> OpenAI function definition
    choice: str  # "none", "auto", "required", or the name of the one function to call
    native: bool  # the model's chat template renders tools itself
    key: str = "arguments"  # what the model's call format names the arguments ("parameters" in Llama 3's)
    parallel: bool = True  # parallel_tool_calls: false keeps an answer's first call only, as OpenAI and vLLM do

    @property
    def required(self) -> bool:
        return self.choice not in ("none", "auto")

    @property
    def offered(self) -> bool:
        return self.choice != "none" and bool(self.functions)

    def call_schema(self) -> dict:
        """The JSON schema a required call follows: one of the allowed functions, with its own arguments."""
        names = [self.choice] if self.choice in self.functions else list(self.functions)
        branches = [{"type": "object", "properties": {"name": {"const": name}, self.key: _parameters(self.functions[name])},
                     "required": ["name", self.key], "additionalProperties": False} for name in names]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(the answer's text without its calls or None, the calls to known functions in it)."""
        if not self.offered:
            return text, []
        found = [(m.group(0), m.group(1)) for m in _BLOCK.finditer(text)]
        if not found and text.strip().startswith(("{", "[")):  # a bare JSON call (or list of them)
            found = [(text, text.strip())]
        calls, rest = [], text
        for whole, inner in found:
            parsed = self._calls(inner)
            if parsed:
                calls += parsed
                rest = rest.replace(whole, "", 1)
        if not calls and self.required:
            cut = self._cut_short(text)
            return (None, cut) if cut else (text, [])
        if not calls:
            return text, []
        rest = rest.strip()
        return (rest or None), calls if self.parallel else calls[:1]

    def _cut_short(self, text: str) -> list[ToolCall]:
        """A required call the token limit cut short, as OpenAI returns one (finish_reason "length"): its
        function and the arguments written so far, not valid JSON; none while which function is unknown."""
        named = _NAME.match(text)
        written = named.group(1) if named else ""
        whole = bool(named) and text[named.end():named.end() + 1] == '"'
        fits = [self.choice] if self.choice in self.functions else [
            f for f in self.functions if (f == written if whole else f.startswith(written))]
        if len(fits) != 1:
            return []
        args = re.compile(rf'"{re.escape(self.key)}"\s*:\s*').search(text, named.end() if named else 0)
        return [ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                         function=FunctionCall(name=fits[0], arguments=text[args.end():] if args else ""))]

    def _calls(self, inner: str) -> list[ToolCall]:
        try:
            value = json.loads(inner)
        except ValueError:
            return []
        out = []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or item.get("name") not in self.functions:
                return []
            args = item.get(self.key, item.get("arguments", item.get("parameters", {})))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    return []
            if not isinstance(args, dict):
                return []
            out.append(ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                                function=FunctionCall(name=item["name"], arguments=json.dumps(args, ensure_ascii=False))))
        return out


def _parameters(definition: dict) -> dict:
    """The arguments a required call is decoded under: the listed ones only (structured.closed), as vLLM decodes them."""
    return closed(definition.get("parameters") or {"type": "object", "properties": {}})


def tool_use(tokenizer, body: s.ChatRequest) -> ToolUse | None:
    """The request's tool use, checked (400 naming the field), or None when it neither offers tools nor
    carries calls or results in its messages."""
    carries = any(m.role == "tool" or m.tool_calls for m in body.messages)
    if not body.tools and body.tool_choice is None and not carries:
        return None
    functions: dict[str, dict] = {}
    for i, tool in enumerate(body.tools or []):
        name = tool.function.name
        if name in functions:
            raise ApiError(400, f"tools[{i}].function.name: '{name}' is defined twice; give each function one "
                           "definition", param=f"tools[{i}].function.name", code="invalid_value")
        if not isinstance(tool.function.parameters, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object",
                           param=f"tools[{i}].function.parameters", code="invalid_value")
        check_schema(tool.function.parameters, f"tools[{i}].function.parameters")  # under "auto" too: nothing compiles it
        kind = tool.function.parameters.get("type", "object")
        if kind != "object":  # a call's arguments are a JSON object (OpenAI refuses the same): an array schema was decoded
            raise ApiError(400, f"tools[{i}].function.parameters: the arguments of a call are a JSON object, so the "
                           f"schema's type must be \"object\" (it is {json.dumps(kind)}); put the values in the "
                           "object's properties", param=f"tools[{i}].function.parameters", code="invalid_value")
        functions[name] = tool.function.model_dump(exclude_none=True)
    choice = body.tool_choice or ("auto" if functions else "none")
    if not isinstance(choice, str):
        choice = choice.function.name
        if choice not in functions:
            known = ", ".join(functions) or "none: the request has no tools"
            raise ApiError(400, f"tool_choice names function '{choice}', which is not in tools (defined: {known}); "
                           "name a function from tools", param="tool_choice.function.name", code="unknown_function")
    elif choice == "required" and not functions:
        raise ApiError(400, "tool_choice 'required' needs tools: send the functions the model may call in tools",
                       param="tool_choice", code="invalid_value")
    if choice not in ("none", "auto"):
        if requested(body) is not None:
            raise ApiError(400, f"tool_choice '{body.tool_choice if isinstance(body.tool_choice, str) else choice}' and "
                           f"{requested(body)[2].split('.')[0]} both constrain the answer; send one of them",
                           param="tool_choice", code="invalid_value")
    _check_messages(body, functions)
    template = getattr(tokenizer, "chat_template", None) or ""
    native = "tools" in template
    key = "parameters" if native and "<|eot_id|>" in template and OPEN not in template else "arguments"
    return ToolUse(functions, choice, native, key, parallel=body.parallel_tool_calls)


def _check_messages(body: s.ChatRequest, functions: dict[str, dict]) -> None:
    """Calls in the conversation name offered functions and carry JSON objects; each result answers a call."""
    call_ids: set[str] = set()
    for i, m in enumerate(body.messages):
        if m.tool_calls and m.role != "assistant":
            raise ApiError(400, f"messages[{i}].tool_calls: only assistant messages carry tool calls",
                           param=f"messages[{i}].tool_calls", code="invalid_value")
        for j, call in enumerate(m.tool_calls or []):
            where = f"messages[{i}].tool_calls[{j}].function"
            if functions and call.function.name not in functions:
                raise ApiError(400, f"{where}.name: a call to '{call.function.name}', which is not in tools (defined: "
                               f"{', '.join(functions)}); send that function in tools or drop the call",
                               param=f"{where}.name", code="unknown_function")
            try:
                args = json.loads(call.function.arguments or "{}")
            except ValueError as err:
                args = err
            if not isinstance(args, dict):
                raise ApiError(400, f"{where}.arguments must be a JSON object in a string, like '{{\"city\": \"Paris\"}}'",
                               param=f"{where}.arguments", code="invalid_value")
            call_ids.add(call.id)
        if m.role == "tool":
            if not m.tool_call_id:
                raise ApiError(400, f"messages[{i}].tool_call_id is required: say which call this result answers",
                               param=f"messages[{i}].tool_call_id", code="invalid_value")
            if m.tool_call_id not in call_ids:
                raise ApiError(400, f"messages[{i}].tool_call_id '{m.tool_call_id}' answers no earlier assistant tool "
                               "call; use the id of a call in tool_calls", param=f"messages[{i}].tool_call_id",
                               code="invalid_value")


def chat_messages(body: s.ChatRequest, use: ToolUse | None) -> tuple[list[dict], list[dict] | None]:
    """The conversation as the chat template takes it, and the tools to hand the template (None: none)."""
    plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in body.messages]
    if use is None:
        return plain, None
    names = {c.id: c.function.name for m in body.messages for c in (m.tool_calls or [])}
    if use.native:
        out = []
        for m, d in zip(body.messages, plain, strict=True):
            if m.tool_calls:
                d["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": json.loads(c.function.arguments or "{}")}}
                    for c in m.tool_calls]
            if m.role == "tool":
                d.update(tool_call_id=m.tool_call_id, name=names.get(m.tool_call_id, ""))
            out.append(d)
        tools = [{"type": "function", "function": f} for f in use.functions.values()] if use.offered else None
        return out, tools
    return _as_text(body, plain, use, names), None


def _as_text(body: s.ChatRequest, plain: list[dict], use: ToolUse, names: dict[str, str]) -> list[dict]:
    """For a template that knows no tools: the tools in the system turn, calls and results as text."""
    out: list[dict] = []
    for m, d in zip(body.messages, plain, strict=True):
        if m.tool_calls:
            calls = "\n".join(f"{OPEN}\n" + json.dumps({"name": c.function.name,
                              "arguments": json.loads(c.function.arguments or "{}")}, ensure_ascii=False) + f"\n{CLOSE}"
                              for c in m.tool_calls)
            d["content"] = (d["content"] + "\n" if d["content"] else "") + calls
        if m.role == "tool":
            result = f"<tool_response>\n{json.dumps({'name': names.get(m.tool_call_id, ''), 'content': d['content']}, ensure_ascii=False)}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1]["content"] += "\n" + result  # several results of one turn's calls: one user turn
                continue
            d = {"role": "user", "content": result}
        out.append(d)
    if use.offered:
        listing = "\n".join(json.dumps({"type": "function", "function": f}, ensure_ascii=False)
                            for f in use.functions.values())
        text = ("You may call functions to help answer. The functions:\n" + listing + "\n\nTo call one, answer with "
                f"only:\n{OPEN}\n" + '{"name": <function name>, "arguments": <arguments as a JSON object>}' + f"\n{CLOSE}\n"
                "A function's result comes back in <tool_response> tags.")
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


class CallStream:
    """One streamed choice's text under tool use: text that cannot be part of a call goes out at once; from
    where a call may start it is held, and at the end it becomes calls or, failing that, text."""

    def __init__(self, use: ToolUse):
        self.use, self.held, self.sent = use, "", ""

    def push(self, piece: str) -> str:
        if self.use.required:  # the whole answer is the call
            self.held += piece
            return ""
        text = self.held + piece
        if not self.sent.strip() and text.lstrip().startswith(("{", "[")):
            self.held = text  # a bare JSON call, perhaps
            return ""
        cut = text.find(OPEN)
        if cut < 0:  # hold a tail that may be the start of OPEN
            cut = next((k for k in range(max(0, len(text) - len(OPEN) + 1), len(text)) if OPEN.startswith(text[k:])),
                       len(text))
        self.held, out = text[cut:], text[:cut]
        self.sent += out
        return out

    def finish(self) -> tuple[str | None, list[ToolCall]]:
        """(held text to send, the calls): the calls found in the whole answer, or the held text as text."""
        content, calls = self.use.parse(self.sent + self.held)
        if not calls:
            return self.held or None, []
        rest = (content or "")[len(self.sent.strip()):].strip() if content else ""
        return (rest or None), calls
