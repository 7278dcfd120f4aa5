"""Structured output for the OpenAI routes: what a request asks its answer to look like, as a grammar.

`response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}})
and vLLM's extensions `guided_json`, `guided_regex` and `guided_choice` become one compiled grammar
(`runtime.grammar`, llguidance); each choice of the request then decodes under its own `TokenConstraint`,
row by row inside the batched engine, on torch and llama.cpp alike (the engine samples every backend's
logits itself). A schema or regex the engine cannot enforce is a 400 naming the request field and the part
of the spec that failed, before anything is queued; so is a schema that is not a JSON Schema at all (checked against
its draft's metaschema, also for tools no grammar is compiled for), with the place inside the client's own schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmkit.runtime.grammar import Grammar, GrammarError, compile_constraint, vocabulary
from llmkit.serve.errors import ApiError

if TYPE_CHECKING:
    import llmkit.serve.schemas as s
    from llmkit.serve.served import ServedModel


def requested(body: s.Sampling) -> tuple[str, object, str] | None:
    """(grammar kind, its spec, the request field it came from) of the constraint a request asks for."""
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        return "json_object", None, "response_format"
    if fmt is not None and fmt.type == "json_schema":
        return "json_schema", fmt.json_schema.schema_, "response_format.json_schema.schema"
    if body.guided_json is not None:
        return "json_schema", body.guided_json, "guided_json"
    if body.guided_regex is not None:
        return "regex", body.guided_regex, "guided_regex"
    if body.guided_choice is not None:
        return "choice", body.guided_choice, "guided_choice"
    return None


def grammar_for(served: ServedModel, body: s.Sampling, call_schema: dict | None = None) -> Grammar | None:
    """The compiled grammar a request asks for (None: free text); `call_schema`, a required tool call's. Blocking
    (the first call per tokenizer reads its whole vocabulary, ~0.5 s): the routes call it off the event loop."""
    want = requested(body) if call_schema is None else ("json_schema", call_schema, "tools")
    if want is None:
        return None
    kind, spec, field = want
    if kind == "json_schema" and call_schema is None:
        check_schema(spec, field)
        if field == "response_format.json_schema.schema" and body.response_format.json_schema.strict:
            spec = closed(spec)
    try:
        vocab = vocabulary(served.tokenizer)
    except Exception as err:  # a tokenizer the engine cannot read (not a Hugging Face fast tokenizer)
        # The engine's own words, to their first colon ("can't determine decoder type"), not its exception's class name.
        detail = (str(err).splitlines() or [""])[0].split(":")[0].strip() or type(err).__name__
        raise ApiError(400, f"{field}: structured output is not available for '{served.id}': the grammar engine reads "
                       f"byte-level BPE and SentencePiece tokenizers, and cannot read this one (a character-level "
                       f"tokenizer, say; the engine: {detail}); drop {field}", param=field,
                       code="unsupported_model") from None
    try:
        return compile_constraint(kind, spec, vocab)
    except GrammarError as err:
        if call_schema is not None:  # the call's schema wraps every function's: name the function that failed
            field, err = _failing_tool(body, vocab) or (field, err)
        raise ApiError(400, f"{field}: {err}", param=field, code="invalid_grammar") from None


def _failing_tool(body: s.ChatRequest, vocab) -> tuple[str, GrammarError] | None:
    """(its field, its error) of the first tool whose parameters the grammar engine refuses on their own: the error then
    points inside the client's schema, not into the wrapper a required call is decoded under."""
    for i, tool in enumerate(body.tools or []):
        if tool.function.parameters:
            try:
                compile_constraint("json_schema", tool.function.parameters, vocab)
            except GrammarError as err:
                return f"tools[{i}].function.parameters", err
    return None


# Where an object's properties may come from elsewhere (allOf, a $ref or alternatives beside its own properties):
# closing such a schema could forbid them, so it stays as sent. Under "not", closing would turn the meaning around.
_COMBINING = ("allOf", "not", "unevaluatedProperties", "if", "dependentSchemas", "dependencies")
_BESIDE = ("anyOf", "oneOf", "$ref", "$dynamicRef")


def closed(schema):
    """`schema` with every object that lists its properties and says nothing of others closed to them
    (`additionalProperties: false`), as OpenAI's strict mode and vLLM's default grammar take them: a strict answer
    or a tool call's arguments carry the listed keys only (open, a small model filled its budget with keys of its
    own, and `fn(**arguments)` fails on them). A schema that combines objects (allOf and the like) stays as sent."""
    if not isinstance(schema, dict) or _combines(schema):
        return schema
    return _close(schema)


def _combines(node) -> bool:
    if isinstance(node, list):
        return any(_combines(v) for v in node)
    if not isinstance(node, dict):
        return False
    if any(k in node for k in _COMBINING) or ("properties" in node and any(k in node for k in _BESIDE)):
        return True
    return any(_combines(list(v.values()) if k in _MAPS and isinstance(v, dict) else v)
               for k, v in node.items() if k not in _VALUES)


_VALUES = ("enum", "const", "default", "examples", "required")  # values, not schemas
_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema


def _close(node):
    if isinstance(node, list):
        return [_close(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _MAPS and isinstance(value, dict):
            out[key] = {name: _close(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _VALUES else _close(value)
    if "properties" in node and not any(k in node for k in ("additionalProperties", "patternProperties")):
        out["additionalProperties"] = False
    return out


def check_schema(schema, field: str) -> None:
    """A 400 naming `field` and the place inside `schema` where it is not a valid JSON Schema: the metaschema of the
    draft its $schema names, else 2020-12 (what OpenAI's structured outputs take)."""
    import jsonschema

    if not isinstance(schema, dict):
        return  # the grammar engine says what a schema must be (an object)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in err.absolute_path) or "/"
        detail = " ".join(err.message.split())
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        if "type" in list(err.absolute_path)[-2:]:
            detail += " (a type is one of string, number, integer, boolean, object, array, null, or a list of them)"
        raise ApiError(400, f"{field}: not a valid JSON Schema at {where}: {detail}; fix the schema there",
                       param=field, code="invalid_value") from None
