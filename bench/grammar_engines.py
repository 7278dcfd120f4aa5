"""Grammar engines for constrained JSON decoding: xgrammar, llguidance and outlines-core, side by side.

Why: structured output runs a token-mask fill per constrained row per decode step, so the engine's
mask time sits on the decode path; compile time is paid once per new schema (then cached); coverage
is how many real schemas it takes. Every engine gets the same work: the smollm2-135m tokenizer
(49,152 tokens), the 57 schemas of tests/runtime/json_schemas.py compiled one by one with its cache
off and one thread, then for each schema `--walks` random walks (seeded): at each step the engine
fills a 32-bit token bitmask, one allowed token is drawn uniformly, and the engine accepts it; the
walk ends at the stop token, or after `--max-tokens` when the engine then allows the stop token
("force close"), else it counts as unfinished. Outputs are checked with json.loads + jsonschema.
JSON layout is fixed alike where the engine lets us: ", " and ": " separators, no free whitespace
(outlines-core only takes a whitespace regex: " ?").

    .venv/bin/pip install xgrammar outlines-core   # bench only (llguidance is a dependency); xgrammar
                                                   # with --no-deps + apache-tvm-ffi: it pulls triton in
    flock /tmp/llmkit-bench.lock nice -n 19 .venv/bin/python bench/grammar_engines.py [--walks 3]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import llguidance
import llguidance.hf
import llguidance.torch
import numpy as np
import outlines_core
import outlines_core.json_schema
import outlines_core.kernels.torch
import torch
import xgrammar as xgr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
from json_schemas import SCHEMAS  # noqa: E402

from llmkit.models.io import load_tokenizer_for, resolve_model  # noqa: E402

SEPARATORS = (", ", ": ")


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok):
        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.eos = self.info.stop_token_ids[0]

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=SEPARATORS)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m, bitmask):
        m.fill_next_token_bitmask(bitmask)

    def accept(self, m, token):
        assert m.accept_token(token)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok):
        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok))
        self.eos = self.tokenizer.eos_token

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": SEPARATORS[0],
                              "key_separator": SEPARATORS[1]})
        # Building a matcher is where llguidance compiles (and reports errors); keep that one.
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return (grammar, matcher)

    def matcher(self, compiled):
        grammar, first = compiled
        return first.deep_copy()

    def fill(self, m, bitmask):
        self.llg.torch.fill_next_token_bitmask(m, bitmask)

    def accept(self, m, token):
        assert m.consume_token(token), m.get_error()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok):
        self.oc = outlines_core
        self.eos = tok.eos_token_id
        # outlines-core wants each token's bytes: undo the byte-level BPE's printable-character map.
        to_byte = {ch: b for b, ch in _byte_level_chars().items()}
        special = set(tok.all_special_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for text, token_id in tok.get_vocab().items():
            if token_id not in special:
                by_bytes.setdefault(bytes(to_byte[ch] for ch in text), []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(self.eos, by_bytes)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern=" ?")
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, m, bitmask):
        self.oc.kernels.torch.fill_next_token_bitmask(m, bitmask)

    def accept(self, m, token):
        m.advance(token, return_tokens=False)


def _byte_level_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = 0
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def allowed_mask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(vocab,) bool: the tokens whose bit is set in a little-endian int32 bitmask row (as
    llmkit.runtime.grammar unpacks it)."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little", count=vocab)
    return torch.from_numpy(bits.view(np.bool_))


def walk(engine, compiled, vocab: int, rng: random.Random, max_tokens: int, fills: list[float],
         applies: list[float]):
    """One random constrained generation: (token ids, finished?)."""
    m = engine.matcher(compiled)
    bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)
    logits = torch.randn(vocab)
    out: list[int] = []
    while True:
        t0 = time.perf_counter()
        engine.fill(m, bitmask)
        t1 = time.perf_counter()
        # The rest of a constrained step, the same for every engine: bits -> bool mask -> -inf logits.
        mask = allowed_mask(bitmask, vocab)
        torch.where(mask, logits, float("-inf"))
        applies.append(time.perf_counter() - t1)
        fills.append(t1 - t0)
        allowed = mask.nonzero().reshape(-1)
        can_stop = bool((allowed == engine.eos).any())
        if len(out) >= max_tokens:
            return out, can_stop
        if len(allowed) == 0:
            return out, False
        token = int(allowed[rng.randrange(len(allowed))])
        if token == engine.eos:
            return out, True
        engine.accept(m, token)
        out.append(token)


def validates(text: str, schema: dict) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return validator.is_valid(value)


def run_engine(cls, tok, walks: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    engine = cls(tok)
    info_s = time.perf_counter() - t0
    vocab = len(tok)
    compile_s, failed, fills, applies = [], {}, [], []
    valid = invalid = unfinished = 0
    bad_examples = []
    for name, schema in SCHEMAS:
        t0 = time.perf_counter()
        try:
            compiled = engine.compile(schema)
        except Exception as err:  # any engine error is a coverage miss; the message goes in the report
            failed[name] = " ".join(str(err).split())[:160]
            continue
        compile_s.append(time.perf_counter() - t0)
        for seed in range(walks):
            ids, finished = walk(engine, compiled, vocab, random.Random(seed), max_tokens, fills, applies)
            text = tok.decode(ids)
            if not finished:
                unfinished += 1
                bad_examples.append(f"{name} (unfinished): {text[:100]!r}")
            elif validates(text, schema):
                valid += 1
            else:
                invalid += 1
                bad_examples.append(f"{name}: {text[:120]!r}")
    return {"engine": cls.name, "tokenizer_info_s": round(info_s, 3), "compiled": len(compile_s),
            "compile_ms_median": round(1e3 * statistics.median(compile_s), 2),
            "compile_ms_max": round(1e3 * max(compile_s), 1), "compile_s_total": round(sum(compile_s), 2),
            "mask_us_median": round(1e6 * statistics.median(fills), 1),
            "mask_us_p90": round(1e6 * statistics.quantiles(fills, n=10)[-1], 1), "mask_steps": len(fills),
            "apply_us_median": round(1e6 * statistics.median(applies), 1),
            "walks_valid": valid, "walks_invalid": invalid, "walks_unfinished": unfinished,
            "failed": failed, "bad_examples": bad_examples[:6]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--walks", type=int, default=3, help="random walks per schema")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer_for(resolve_model("smollm2-135m"))
    rows = [run_engine(cls, tok, args.walks, args.max_tokens) for cls in (XGrammar, LLGuidance, OutlinesCore)]
    print(f"{len(SCHEMAS)} schemas, {args.walks} walks each, max {args.max_tokens} tokens, smollm2-135m tokenizer "
          f"({len(tok)} tokens), torch {torch.__version__}")
    print(f"{'engine':15}{'info s':>8}{'compiled':>9}{'compile ms med':>15}{'max':>9}{'mask us med':>12}"
          f"{'p90':>8}{'valid':>7}{'invalid':>8}{'unfinished':>11}")
    for r in rows:
        print(f"{r['engine']:15}{r['tokenizer_info_s']:8.2f}{r['compiled']:>9}{r['compile_ms_median']:15.2f}"
              f"{r['compile_ms_max']:9.1f}{r['mask_us_median']:12.1f}{r['mask_us_p90']:8.1f}{r['walks_valid']:7}"
              f"{r['walks_invalid']:8}{r['walks_unfinished']:11}")
        for name, err in r["failed"].items():
            print(f"  {r['engine']} cannot compile {name}: {err}")
        for example in r["bad_examples"]:
            print(f"  {r['engine']} not valid: {example}")
    print(json.dumps({"schemas": len(SCHEMAS), "walks": args.walks, "engines": rows}))


if __name__ == "__main__":
    main()
