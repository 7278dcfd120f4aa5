"""llmkit.runtime.grammar + the Sampler hook (issue 19 item 1, engine part): every schema of the 57-schema
set gives output that parses and validates, decoded for real by smollm2-135m (a subset) and by seeded
random walks over the allowed tokens (all of them); regex and choice constraints; a schema the engine
cannot enforce is a GrammarError naming the part; constrained and unconstrained rows share a batch."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
import transformers as hf

from llmkit.models.io import load_tokenizer_for
from llmkit.runtime.grammar import GrammarError, TokenConstraint, compile_constraint, vocabulary
from llmkit.runtime.sampling import Sampler
from tests import tiny_lm
from tests.runtime.json_schemas import SCHEMAS

# One thread: a 135M model at batch 1 gains little from a second, and a busy second core stalls both.
one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)

BY_NAME = dict(SCHEMAS)
# Keywords llguidance refuses rather than ignores (a GrammarError naming them, checked below).
UNENFORCEABLE = {"unique_list": "uniqueItems"}
# The real-model subset: shapes a 135M model completes in 64 tokens (enums, bounded ints and strings, nesting,
# anyOf, optional fields, an array of objects).
REAL_MODEL_SCHEMAS = ["person", "color_enum", "flags", "priority", "optional_email", "tool_call_like",
                      "config", "extraction"]
STOP = 2  # smollm2's <|im_end|>: the chat turn's end


@pytest.fixture(scope="module")
def tok(smollm2):
    return load_tokenizer_for(smollm2)


@pytest.fixture(scope="module")
def vocab(tok):
    return vocabulary(tok)


@pytest.fixture(scope="module")
def lm(smollm2):
    torch.manual_seed(0)
    return hf.AutoModelForCausalLM.from_pretrained(str(smollm2.path), dtype=torch.float32).eval()


def constraint(kind, spec, vocab) -> TokenConstraint:
    return TokenConstraint(compile_constraint(kind, spec, vocab))


def validates(text: str, schema: dict) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker).is_valid(value)


def random_walk(tok, vocab, kind, spec, seed: int, max_tokens: int = 300) -> tuple[str, bool]:
    """Uniform draws among the allowed tokens, through the Sampler (flat logits, temperature 1)."""
    sampler = Sampler(vocab.size, [], temperature=1.0, seed=seed, constraint=constraint(kind, spec, vocab),
                      eos_ids=[STOP])
    out: list[int] = []
    flat = torch.zeros(vocab.size)
    while len(out) < max_tokens:
        token = sampler(flat)
        if token == STOP:
            return tok.decode(out), True
        out.append(token)
    return tok.decode(out), False


@pytest.mark.parametrize("name", [name for name, _ in SCHEMAS])
def test_random_walks_over_each_schema_validate(tok, vocab, name):
    schema = BY_NAME[name]
    if name in UNENFORCEABLE:
        with pytest.raises(GrammarError, match=UNENFORCEABLE[name]):
            compile_constraint("json_schema", schema, vocab)
        return
    for seed in range(3):
        text, ended = random_walk(tok, vocab, "json_schema", schema, seed)
        assert ended, f"{name} seed {seed}: no end after 300 tokens: {text[:200]!r}"
        assert validates(text, schema), f"{name} seed {seed}: {text!r}"


def chat_prompt(tok, schema: dict) -> list[int]:
    messages = [{"role": "user", "content": "Reply with only a JSON object that matches this JSON schema, "
                                            f"with made-up values:\n{json.dumps(schema)}"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text)["input_ids"]


@torch.no_grad()
def greedy(lm, tok, prompt: list[int], cons: TokenConstraint | None, max_new: int = 64) -> tuple[str, bool]:
    """smollm2 greedy through the Sampler with a KV cache: (text, ended with the stop token?)."""
    sampler = Sampler(len(tok), prompt, temperature=0.0, constraint=cons, eos_ids=[STOP])
    ids, cache, out = torch.tensor([prompt]), None, []
    for _ in range(max_new):
        step = lm(input_ids=ids, cache=cache, use_cache=True)
        cache = step.cache
        token = sampler(step.logits[0, -1])
        if token == STOP:
            return tok.decode(out), True
        out.append(token)
        ids = torch.tensor([[token]])
    return tok.decode(out), False


def test_smollm2_greedy_output_validates_only_with_the_constraint(lm, tok, vocab):
    for name in REAL_MODEL_SCHEMAS:
        schema = BY_NAME[name]
        text, ended = greedy(lm, tok, chat_prompt(tok, schema), constraint("json_schema", schema, vocab))
        assert ended, f"{name}: did not finish in 64 tokens: {text!r}"
        assert validates(text, schema), f"{name}: {text!r}"
    # The same model, prompt and decoding without the constraint answer with JSON that misses the schema
    # (it echoes the schema back), so the checks above test the constraint, not the model.
    text, ended = greedy(lm, tok, chat_prompt(tok, BY_NAME["color_enum"]), None)
    assert ended and json.loads(text) and not validates(text, BY_NAME["color_enum"]), text


def test_json_object_gives_a_json_object(lm, tok, vocab):
    messages = [{"role": "user", "content": "Reply with a JSON object with two keys, name and age, "
                                            "for a cat named Tom who is 3 years old."}]
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))["input_ids"]
    text, ended = greedy(lm, tok, prompt, constraint("json_object", None, vocab))
    assert ended and isinstance(json.loads(text), dict), text


def test_regex_and_choice_constraints_match_exactly(tok, vocab):
    regex = r"[A-Z]{2}-[0-9]{3}(-x)?"
    choices = ["yes", "no", 'say "hi"\n', "a.b*", "ünïcode ✓"]
    for seed in range(6):
        text, ended = random_walk(tok, vocab, "regex", regex, seed)
        assert ended and re.fullmatch(regex, text), text
        text, ended = random_walk(tok, vocab, "choice", choices, seed)
        assert ended and text in choices, text


def test_choice_with_the_real_model(lm, tok, vocab):
    messages = [{"role": "user", "content": "Is the sky green? Answer with one word."}]
    prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))["input_ids"]
    text, ended = greedy(lm, tok, prompt, constraint("choice", ["Absolutely", "Never"], vocab))
    assert ended and text in ("Absolutely", "Never")


@pytest.mark.parametrize(("kind", "spec", "names"), [
    ("json_schema", {"type": "object", "properties": {"ids": {"type": "array", "uniqueItems": True}}},
     ["uniqueItems", "/properties/ids"]),
    ("json_schema", {"type": "object", "properties": {"a": {"anyOf": [{"type": "strng"}]}}},
     ["strng", "/properties/a/anyOf/0/type"]),
    ("json_schema", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 9, "maximum": 1}}},
     ["/properties/n", "minimum is above maximum"]),
    ("json_schema", {"$ref": "#/$defs/missing"}, ["/$defs/missing"]),
    ("json_schema", {"type": "object", "properties": {"a": False}, "required": ["a"]}, ["Unsatisfiable", "'a'"]),
    ("json_schema", {"type": "object", "enum": {1, 2}}, ["not valid JSON"]),
    ("json_schema", ["not", "a", "schema"], ["must be an object"]),
    ("regex", "(unclosed", ["'(unclosed'", "unclosed group"]),
    ("regex", "(?<=a)b", ["look-behind"]),
    ("regex", "[^\\x00-\\x{10FFFF}]", ["admits no output"]),
    ("choice", [], ["non-empty list"]),
    ("grammar", "start: x", ["unknown constraint kind 'grammar'"]),
])
def test_what_cannot_be_compiled_is_a_grammar_error_naming_the_part(vocab, kind, spec, names):
    with pytest.raises(GrammarError) as err:
        compile_constraint(kind, spec, vocab)
    assert isinstance(err.value, ValueError)  # the server maps ValueError-shaped input errors to a 400
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in names), message


def test_vocabulary_and_compiled_grammars_are_cached(tok, vocab):
    assert vocabulary(tok) is vocab
    first = compile_constraint("json_schema", {"type": "object", "properties": {"a": {"type": "integer"}}}, vocab)
    again = compile_constraint("json_schema", {"properties": {"a": {"type": "integer"}}, "type": "object"}, vocab)
    assert again is first


def test_finished_constraint_allows_only_the_callers_end_tokens(tok, vocab):
    cons = constraint("json_schema", BY_NAME["single_bool"], vocab)
    for token in tok('{"ok": true}')["input_ids"]:
        assert cons.mask(vocab.size)[token]
        cons.accept(token)
    assert cons.finished
    # The end ids the caller passes replace the engine's own; nothing else is left, however likely.
    logits = torch.randn(vocab.size + 64)
    logits[:100] = 50.0
    assert cons.mask(vocab.size + 64, [0, 7]).nonzero().flatten().tolist() == [0, 7]
    assert Sampler(vocab.size, [], temperature=0.0, constraint=cons, eos_ids=[0])(logits) == 0


def test_padding_ids_past_the_tokenizer_are_never_picked(vocab):
    cons = constraint("json_object", None, vocab)
    logits = torch.zeros(vocab.size + 64)
    logits[vocab.size:] = 100.0  # the padding rows of a wider embedding, made the most likely
    mask = cons.mask(vocab.size + 64, [STOP])
    assert mask.shape == (vocab.size + 64,) and not mask[vocab.size:].any()
    assert Sampler(vocab.size, [], temperature=0.0, constraint=cons, eos_ids=[STOP])(logits) < vocab.size


def test_mixed_batch_leaves_unconstrained_rows_alone(tok, vocab):
    torch.manual_seed(3)
    logits = torch.randn(4, vocab.size) * 3

    def unconstrained():
        return [Sampler(vocab.size, [1], temperature=0.0), Sampler(vocab.size, [1], temperature=0.8, seed=5),
                Sampler(vocab.size, [1], temperature=0.9, top_p=0.9, repetition_penalty=1.2, seed=6)]

    alone, mixed = unconstrained(), unconstrained()
    cons = constraint("json_schema", BY_NAME["color_enum"], vocab)
    before, constrained = logits.clone(), []
    for step in range(5):
        want = Sampler.sample_batch(alone, logits[[0, 2, 3]])
        got = Sampler.sample_batch(mixed[:1] + [Sampler(vocab.size, [1], temperature=0.0, constraint=cons,
                                                         eos_ids=[STOP])] + mixed[1:], logits)
        assert [got[0], *got[2:]] == want, step
        assert torch.equal(logits, before)  # masking works on a copy
        constrained.append(got[1])
    # The constrained row followed its grammar, whatever the (random) logits preferred.
    text = tok.decode(constrained)
    assert any(f'{{"color": "{c}"}}'.startswith(text) for c in ("red", "green", "blue")), text
    assert constrained[0] != int(logits[1].argmax())


RECURSIVE = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


@pytest.mark.parametrize("kind, spec, names", [
    ("json_schema", RECURSIVE, ["too large or complex", "Too many items", "($ref) must leave the reference optional"]),
    ("regex", "a{1000000}", ["too large or complex", "too many expressions", "smaller pattern"]),
])
def test_a_grammar_over_the_engines_limits_fails_to_compile_in_one_line(vocab, kind, spec, names):
    """Both compiled: the schema failed every sequence on its first token with a multi-line parser dump, and the regex
    gave an empty mask read as "complete", so the answer was empty and did not match."""
    with pytest.raises(GrammarError) as err:
        compile_constraint(kind, spec, vocab)
    message = str(err.value)
    assert "\n" not in message and "<state>" not in message and all(n in message for n in names), message


def test_a_row_whose_grammar_fails_midway_ends_alone(tok, vocab):
    """A grammar that hits an engine limit a few tokens in fails only its own row of a batch; the grammar is then
    refused at compile time (its matchers share the engine's lexer: every later sequence would fail at once)."""
    deep = {"type": "object", "properties": {"b": {"type": "string", "maxLength": 6},
                                             "a": {"type": "string", "pattern": "^a{1000000}$"}}, "required": ["b", "a"]}
    bad = Sampler(vocab.size, [], temperature=1.0, seed=0, constraint=constraint("json_schema", deep, vocab),
                  eos_ids=[STOP])
    torch.manual_seed(4)
    logits = torch.randn(2, vocab.size)
    alone, beside = Sampler(vocab.size, [1], temperature=0.7, seed=1), Sampler(vocab.size, [1], temperature=0.7, seed=1)
    failed: dict[int, Exception] = {}
    for _ in range(40):
        got = Sampler.sample_batch([beside, bad], logits, failed=failed)
        assert got[0] == alone(logits[0])  # the other row draws what it would alone, before, during and after
        if failed:
            break
    assert list(failed) == [1] and got[1] == -1 and isinstance(failed[1], GrammarError)
    assert "too many expressions" in str(failed[1]) and "\n" not in str(failed[1])
    with pytest.raises(GrammarError, match="too large or complex to enforce.*smaller pattern"):
        compile_constraint("json_schema", deep, vocab)
    with pytest.raises(GrammarError):  # without `failed`, as before: the caller's to handle
        Sampler.sample_batch([Sampler(vocab.size, [], temperature=0.0, constraint=bad.constraint)], logits[:1])
