"""Structured output for the OpenAI routes: what a request asks its answer to look like, as a grammar.

`response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}})
and vLLM's extensions `guided_json`, `guided_regex` and `guided_choice` become one compiled grammar
(`runtime.grammar`, llguidance); each choice of the request then decodes under its own `TokenConstraint`,
row by row inside the batched engine, on torch and llama.cpp alike (the engine samples every backend's
logits itself). A schema or regex the engine cannot enforce is a 400 naming the request field and the part
of the spec that failed, before anything is queued.
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
    try:
        vocab = vocabulary(served.tokenizer)
    except Exception as err:  # a tokenizer the engine cannot read (not a Hugging Face fast tokenizer)
        raise ApiError(400, f"{field}: structured output is not available for '{served.id}': its tokenizer cannot be "
                       f"read by the grammar engine ({type(err).__name__}); drop {field}", param=field,
                       code="unsupported_model") from None
    try:
        return compile_constraint(kind, spec, vocab)
    except GrammarError as err:
        raise ApiError(400, f"{field}: {err}", param=field, code="invalid_grammar") from None
