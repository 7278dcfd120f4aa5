"""Constrained decoding: JSON objects, JSON schemas, regexes and fixed choices as per-token masks.

llguidance does the work (bench/grammar_engines.py measured it against xgrammar and outlines-core:
the only one whose every random walk over the 57 test schemas validated, and it refuses keywords
it cannot enforce instead of ignoring them). One `TokenConstraint` per sequence: before each pick
the sampler asks for `mask(width)`, after it calls `accept(token)`.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import llguidance
import numpy as np
import torch

KINDS = ("json_object", "json_schema", "regex", "choice")
# Compiling is ~1 ms but a server sees the same few schemas again and again; 64 covers an app's set.
COMPILED_PER_VOCABULARY = 64
# JSON layout as models write it ({"a": 1, "b": 2}), with no free whitespace: a small model given
# free whitespace can spend its whole budget on newlines, and the tokens are never worth it.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A constraint the engine cannot compile or follow; the message (one line) names the part that failed."""

    def __init__(self, message: str, engine_error: str = ""):
        super().__init__(message)
        self.engine_error = engine_error or message  # the engine's own words, one line


@dataclass(eq=False)
class Vocabulary:
    """The engine's view of one tokenizer (building it reads the whole vocabulary: ~0.5 s, so cached)."""

    tokenizer: llguidance.LLTokenizer
    size: int  # ids the tokenizer knows; a model's logits may be wider (padding ids)
    stop_id: int  # the engine's own end token; callers map it onto theirs (see TokenConstraint.mask)
    compiled: OrderedDict = field(default_factory=OrderedDict)  # (kind, canonical spec) -> Grammar, LRU
    # Request handlers may compile at the same time; an OrderedDict's LRU moves are not thread-safe.
    lock: threading.Lock = field(default_factory=threading.Lock)


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> Vocabulary:
    """The engine's tokenizer info for a Hugging Face fast tokenizer, built once per tokenizer object."""
    found = _VOCABULARIES.get(tokenizer)
    if found is None:
        import llguidance.hf  # here: it imports transformers (0.75 s), which a command given no grammar may never need

        size = len(tokenizer)
        engine_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=size)
        found = Vocabulary(engine_tokenizer, size, engine_tokenizer.eos_token)
        _VOCABULARIES[tokenizer] = found
    return found


@dataclass(eq=False)
class Grammar:
    """A compiled constraint: a matcher in its start state, copied for each sequence."""

    kind: str
    vocab: Vocabulary
    start: llguidance.LLMatcher
    # The engine's error once a sequence under it hit a limit: the matchers of one grammar share the engine's lexer,
    # so later sequences fail at once too (seen with a pattern of a{1000000} deep in a schema); refused from then on.
    failed: str = ""


def compile_constraint(kind: str, spec, vocab: Vocabulary) -> Grammar:
    """Compile json_object (spec ignored), json_schema (a dict), regex (a str) or choice (a list of str)."""
    try:
        key = (kind, None if kind == "json_object" else json.dumps(spec, sort_keys=True, separators=(",", ":")))
    except (TypeError, ValueError) as err:  # a set, bytes, NaN...: not something JSON can say
        raise GrammarError(f"{_what(kind)} is not valid JSON: {err}") from None
    with vocab.lock:
        cached = vocab.compiled.get(key)
        if cached is not None:
            vocab.compiled.move_to_end(key)
    if cached is not None:
        if cached.failed:
            raise GrammarError(_too_large(kind, spec, cached.failed))
        return cached
    matcher = llguidance.LLMatcher(vocab.tokenizer, _engine_grammar(kind, spec), log_level=0)
    if matcher.is_error():
        raise GrammarError(_explain(kind, spec, matcher.get_error()))
    grammar = Grammar(kind, vocab, matcher)
    _probe(grammar, kind, spec)
    with vocab.lock:
        vocab.compiled[key] = grammar
        if len(vocab.compiled) > COMPILED_PER_VOCABULARY:
            vocab.compiled.popitem(last=False)
    return grammar


# First tokens the probe walks past: the engine's limits (items, lexer size) trip on the first token or two of a
# grammar that is too large, e.g. a required self-reference or a{1000000}; eight keeps compiling ~ms.
PROBE_TOKENS = 8


def _probe(grammar: Grammar, kind: str, spec) -> None:
    """Fail at compile time what would fail every sequence on its first tokens: nothing can be written, or the
    engine hits one of its limits computing the first mask or advancing past the first allowed tokens."""
    first = TokenConstraint(grammar)
    try:
        allowed = first.mask(grammar.vocab.size)
        allowed[grammar.vocab.stop_id] = False
        for token in allowed.nonzero()[:PROBE_TOKENS, 0].tolist():
            walk = TokenConstraint(grammar)
            walk.mask(grammar.vocab.size)  # as a sequence does: the engine's limits trip on the mask's work
            walk.accept(token)
    except GrammarError as err:
        raise GrammarError(_too_large(kind, spec, err.engine_error)) from None
    if not allowed.any() and not first.accepting:
        # Valid to the engine but nothing can be written: fail now, not with a sequence that can only stop.
        raise GrammarError(f"{_what(kind)} admits no output at all")


def _too_large(kind: str, spec, error: str) -> str:
    """One line for a grammar the engine gave up on: which limit, and what to change."""
    if kind == "regex":
        fix = "use a smaller pattern (fewer or shorter repetitions)"
    elif kind == "json_schema" and "lexer" in error and (at := _find(spec, lambda k, v: k == "pattern")) is not None:
        fix = f"use a smaller pattern (first at {at})"
    elif kind == "json_schema" and _find(spec, lambda k, v: k == "$ref") is not None:
        fix = "a schema that refers to itself ($ref) must leave the reference optional, so a value can end"
    else:
        fix = "simplify it"
    return f"{_what(kind)} is too large or complex to enforce ({error}); {fix}"


def one_line(error: str) -> str:
    """The engine's error without the parser state and grammar it appends (dozens of lines), on one line."""
    head = error.split("<state>")[0].split("\n")[0]
    head = head.split("; try avoiding")[0]  # the engine's hint to grammar authors, not to a client
    return " ".join(head.split())[:300]


def _engine_grammar(kind: str, spec) -> str:
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    if kind == "json_schema":
        if not isinstance(spec, dict):
            raise GrammarError(f"a JSON schema must be an object, not {type(spec).__name__}")
        _check_bounds(spec)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(spec, defaults=JSON_LAYOUT)
        except ValueError as err:  # not serialisable as JSON
            raise GrammarError(f"the JSON schema is not valid JSON: {err}") from None
    if kind == "regex":
        if not isinstance(spec, str) or not spec:
            raise GrammarError("a regex constraint must be a non-empty string")
        return llguidance.LLMatcher.grammar_from_regex(spec)
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) and c for c in spec):
            raise GrammarError("a choice constraint must be a non-empty list of non-empty strings")
        # A Lark rule of string literals: JSON string escaping is Lark's, so any text is matched literally.
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec))
    raise GrammarError(f"unknown constraint kind {kind!r}; use one of {', '.join(KINDS)}")


BOUNDS = (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems"),
          ("minProperties", "maxProperties"))


def _check_bounds(schema) -> None:
    """Crossed bounds compile (the engine sees an empty range) but leave a sequence stuck halfway, e.g.
    `{"x": ` with no digit allowed: name them up front instead."""
    for low, high in BOUNDS:
        where = _find(schema, lambda k, v, low=low, high=high: isinstance(v, dict) and _crossed(v, low, high))
        if where is None and _crossed(schema, low, high):
            where = ""
        if where is not None:
            raise GrammarError(f"the JSON schema admits no value at {where or '/'}: {low} is above {high}")


def _crossed(node: dict, low: str, high: str) -> bool:
    lo, hi = node.get(low), node.get(high)
    return isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi


def _what(kind: str) -> str:
    return {"json_object": "the JSON object grammar", "json_schema": "the JSON schema", "regex": "the regex",
            "choice": "the choice list"}.get(kind, kind)


def _explain(kind: str, spec, error: str) -> str:
    """One line: what the engine rejected and, for a schema, where in it (a JSON pointer)."""
    error = " ".join(error.split())
    if kind == "regex":
        detail = error.split("error:")[-1].strip() if "error:" in error else error
        detail = re.split(r" \d+ \| ", detail)[0]  # drop the engine's echo of its own grammar text
        return f"the regex {spec!r} cannot be compiled: {detail}"
    if kind != "json_schema":
        return f"{_what(kind)} cannot be compiled: {error}"
    where = None
    keys = re.search(r"Unimplemented keys: \[(.*?)\]", error)
    if keys:
        names = [name.strip().strip('"') for name in keys.group(1).split(",")]
        where = next((p for name in names if (p := _find(spec, lambda k, v, n=name: k == n)) is not None), None)
        error = f"keyword {', '.join(names)} is not supported for constrained output"
    elif bad_type := re.search(r"Invalid type: (\S+)", error):
        where = _find(spec, lambda k, v: k == "type" and bad_type.group(1) in (v if isinstance(v, list) else [v]))
    elif "regex parse error" in error:  # the engine quotes the pattern, not where it is
        where = _find(spec, lambda k, v: k == "pattern" and isinstance(v, str) and v in error)
    return f"the JSON schema cannot be enforced{f' at {where}' if where is not None else ''}: {error}"


def _find(node, match, path: str = "") -> str | None:
    """JSON pointer of the first key/value pair for which match(key, value) holds."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
        if match(key, value):
            return here
        found = _find(value, match, here)
        if found is not None:
            return found
    return None


class TokenConstraint:
    """The grammar state of one sequence: which tokens may come next, advanced token by token."""

    def __init__(self, grammar: Grammar):
        self.grammar, self.vocab = grammar, grammar.vocab
        self.matcher = grammar.start.deep_copy()
        # One bit per token, filled in place by the engine each step (no allocation on the decode path).
        self._bits = np.zeros((self.vocab.size + 31) // 32, dtype=np.uint32)

    def mask(self, width: int, stop_ids=()) -> torch.Tensor:
        """(width,) bool, True where a token may come next. `width` is the logits' width: ids past the
        tokenizer's (padding rows of the embedding) are never allowed. The engine's own end token is
        replaced by `stop_ids` (the caller's end-of-sequence ids) when those are given."""
        allowed = np.zeros(width, dtype=np.bool_)
        if self._gave_up():  # an engine in error reads as stopped: it must not pass for a complete answer
            raise self._error("the grammar engine gave up")
        if self.finished:
            may_stop = True
        else:
            self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            if self._gave_up():  # an empty mask here would end the answer as if it were complete
                raise self._error("the grammar engine gave up")
            # Bit i of the little-endian words is token i, which unpackbits reads as bytes in order.
            bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=self.vocab.size)
            n = min(width, self.vocab.size)
            allowed[:n] = bits[:n]
            may_stop = bool(bits[self.vocab.stop_id]) or not allowed.any()  # nothing allowed: end, not NaN
        if stop_ids:
            allowed[self.vocab.stop_id] = False
            allowed[[i for i in stop_ids if i < width]] = may_stop
        else:
            allowed[self.vocab.stop_id] = may_stop
        return torch.from_numpy(allowed)

    def accept(self, token_id: int) -> None:
        """Advance past a token the mask allowed (an end-of-sequence id is the caller's to not pass)."""
        if not self.matcher.consume_token(token_id):
            raise self._error(f"token {token_id} could not be followed")

    def _gave_up(self) -> bool:
        """The engine hit one of its limits (too many items, a lexer too large). Its "NoExtensionBias" is not one:
        nothing can follow, and the sequence may only stop (as the mask then says)."""
        return self.matcher.is_error() and not self.matcher.get_error().startswith("NoExtensionBias")

    def _error(self, what: str) -> GrammarError:
        engine = one_line(self.matcher.get_error())
        self.grammar.failed = engine
        return GrammarError(f"{what}: {engine}", engine)

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing may follow but the end of the sequence."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """The output so far is complete (it may still go on, e.g. a regex `a+`)."""
        return self.matcher.is_accepting()
