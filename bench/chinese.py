"""Chinese text through the data stage (issue 22): tokenizer compression, near duplicates, PII.

Tokenizer: `prepare` runs on ../shared/data/chinese_poetry as a user would run it (`data prepare FOLDER
--task lm --tokenizer bpe:V`) for V = 2k, 4k, 8k, 16k, 32k; characters per token is the val split's
characters over the tokens its texts encode to (no document separators). Beside it, the byte-level BPE with
GPT-2's pre-tokens (what `prepare` trained before CJK pre-tokens) trained on the same train split. The curve
is a PNG. (Until e0732e9 prepare read two Tang files' `id` fields as the text; the folder is read right now.)
A yardstick beside it: a vocabulary of the same size built without merges (the characters seen twice in the
train split and its most frequent 2-4-grams, of ideographs only or of anything), with val cut optimally into it.

Near duplicates: 200 distinct Tang poems (poet.tang.0.json; a poem within edit ratio 0.8 of one already drawn
is not drawn) and 50 copies with one Chinese character replaced, through `NearDuplicateIndex` at the default
threshold (data.near_threshold): recall of the copies, and false matches (two different poems, or a copy and
a poem it was not made from, at or above the threshold). Seed 0 is the figure; seeds 1-4 show the spread.
"before" is the same run with word 5-grams for every text, as dedupe shingled before.

PII: precision and recall per type and per kind on tests/data/pii_cases_zh.jsonl (mainland mobile and
landline numbers, resident IDs, e-mail addresses, some written in full width; 200+ hard negatives).

Demo: `llmkit demo --act scratch --data ../shared/data/chinese_poetry --minutes M --no-serve --json` in a fresh
workspace (M = 3, the issue's command; --demo-minutes changes it, 0 skips it): the test split's bits per
byte, the steps trained in the budget, the samples, and the share of the samples' clauses (text between
，。！？；) of five or seven characters, counted over the complete lines only.

    nice -n 19 .venv/bin/python bench/chinese.py [--vocab 2000,4000,8000,16000,32000] [--plot PATH] [--demo-minutes 3]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without an installed package too

from llmkit.config import DataConfig  # noqa: E402
from llmkit.data import dedupe  # noqa: E402
from llmkit.data.pii import find_pii  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
POETRY = SHARED / "chinese_poetry"
PII_CASES = ROOT / "tests" / "data" / "pii_cases_zh.jsonl"
VOCABS = (2000, 4000, 8000, 16000, 32000)


# -- tokenizer --------------------------------------------------------------------------------------


def _gpt2_bpe(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llmkit.data.tokenizer import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _chars_per_token(tok, texts: list[str]) -> float:
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return sum(map(len, texts)) / tokens


CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]+")
PUNCTUATION_BREAK = re.compile(r"[。，！？；、：]\n")


def ngram_vocabulary_cpt(train: list[str], val: list[str], vocab: int, punctuation_apart: bool) -> float:
    """Characters per token on `val` of a vocabulary made without merges, as a yardstick for BPE: the 256 bytes,
    the characters seen twice in `train` (the most frequent ones when they outnumber `vocab`), and the 2- to
    4-grams of `train` that save it the most tokens (count x (n - 1)) up to `vocab` entries; each val text cut
    into the fewest of those tokens (dynamic programming; an unknown character costs its UTF-8 bytes).
    `punctuation_apart`: n-grams of ideographs only, and punctuation with the line break after it (what the CJK
    pre-tokens allow); else any n-gram, punctuation and line breaks included."""
    from llmkit.data.tokenizer import SPECIAL_TOKENS

    room = vocab - 256 - len(SPECIAL_TOKENS)
    chars = {c for c, n in Counter("".join(train)).most_common(room) if n >= 2}
    grams: Counter = Counter()
    for text in train:
        for part in CJK_RUN.findall(text) if punctuation_apart else [text]:
            for n in (2, 3, 4):
                grams.update(part[i: i + n] for i in range(len(part) - n + 1))
        if punctuation_apart:
            grams.update(PUNCTUATION_BREAK.findall(text))
    room -= len(chars)
    pieces = chars | {g for g, _ in sorted(grams.items(), key=lambda kv: -kv[1] * (len(kv[0]) - 1))[:room]}
    tokens = 0
    for text in val:
        fewest = [0] + [0] * len(text)  # fewest[i]: tokens for text[:i]
        for i in range(1, len(text) + 1):
            c = text[i - 1]
            fewest[i] = fewest[i - 1] + (1 if c in pieces else len(c.encode("utf-8")))
            for n in (2, 3, 4):
                if i >= n and text[i - n: i] in pieces:
                    fewest[i] = min(fewest[i], fewest[i - n] + 1)
        tokens += fewest[-1]
    return sum(map(len, val)) / tokens


def tokenizer_curve(vocabs: list[int], source: Path) -> list[dict]:
    from tokenizers import Tokenizer

    from llmkit.data import prepare
    from llmkit.registry import Registry
    from llmkit.workspace import Workspace

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        registry = Registry.for_workspace(ws.root)
        for vocab in vocabs:
            t0 = time.perf_counter()
            ds = prepare(DataConfig(inputs=[str(source)], task="lm", tokenizer=f"bpe:{vocab}", name=f"poetry{vocab}"),
                         ws, registry)
            split = {s: [json.loads(line)["text"] for line in open(ds.path / "records" / f"{s}.jsonl", encoding="utf-8")]
                     for s in ("train", "val")}
            poems = [t for t in split["val"] if any("\u4e00" <= c <= "\u9fff" for c in t)]
            tok = Tokenizer.from_file(str(ds.path / "tokenizer" / "tokenizer.json"))
            before = _gpt2_bpe(split["train"], vocab)
            rows.append({"vocab": vocab, "val_records": len(split["val"]), "val_poems": len(poems),
                         "cpt_val": _chars_per_token(tok, split["val"]), "cpt_val_poems": _chars_per_token(tok, poems),
                         "cpt_train": _chars_per_token(tok, split["train"]),
                         "cpt_val_gpt2": _chars_per_token(before, split["val"]),
                         "cpt_val_poems_gpt2": _chars_per_token(before, poems),
                         "cpt_val_ngrams_apart": ngram_vocabulary_cpt(split["train"], split["val"], vocab, True),
                         "cpt_val_ngrams": ngram_vocabulary_cpt(split["train"], split["val"], vocab, False),
                         "seconds": time.perf_counter() - t0})
    return rows


def plot_curve(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vocabs = [r["vocab"] for r in rows]
    for key, label, style in (("cpt_val", "CJK pre-tokens", "o-"), ("cpt_val_gpt2", "GPT-2 pre-tokens (before)", "o--")):
        ax.plot(vocabs, [r[key] for r in rows], style, label=label)
    ax.axhline(1.3, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(vocabs, [f"{v // 1000}k" for v in vocabs])
    ax.set_xlabel("BPE vocabulary")
    ax.set_ylabel("characters per token (val)")
    ax.set_title("chinese_poetry: characters per token by vocabulary")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# -- near duplicates --------------------------------------------------------------------------------


def tang_near_copies(n_poems: int = 200, n_copies: int = 50, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    """The set of tests/data/test_dedupe_cjk.py: distinct poems, one-character copies, each copy's poem."""
    rows = json.loads((POETRY / "poet.tang.0.json").read_text(encoding="utf-8"))
    texts = list(dict.fromkeys("\n".join(r["paragraphs"]) for r in rows if r["paragraphs"]))
    rng = random.Random(seed)
    poems: list[str] = []
    for text in rng.sample(texts, len(texts)):
        if all(difflib.SequenceMatcher(None, text, p).quick_ratio() < 0.8
               or difflib.SequenceMatcher(None, text, p).ratio() < 0.8 for p in poems):
            poems.append(text)
        if len(poems) == n_poems:
            break
    han = sorted({c for t in texts for c in t if "\u4e00" <= c <= "\u9fff"})
    copies, owners = [], []
    for i in rng.sample(range(n_poems), n_copies):
        poem = poems[i]
        at = rng.choice([k for k, c in enumerate(poem) if "\u4e00" <= c <= "\u9fff"])
        copies.append(poem[:at] + rng.choice([c for c in han if c != poem[at]]) + poem[at + 1:])
        owners.append(i)
    return poems, copies, owners


def near_duplicates(seed: int, threshold: float) -> dict:
    poems, copies, owners = tang_near_copies(seed=seed)
    index = dedupe.NearDuplicateIndex(threshold)
    flagged_poems = sum(index.seen_or_add(s) for s in dedupe.signatures(poems))
    found = sum(index.seen_or_add(s) for s in dedupe.signatures(copies))
    p, c = np.stack(dedupe.signatures(poems)), np.stack(dedupe.signatures(copies))
    poem_pairs = (p[:, None, :] == p[None, :, :]).mean(axis=2) >= threshold
    copy_pairs = (c[:, None, :] == p[None, :, :]).mean(axis=2) >= threshold
    wrong_copy = int(copy_pairs.sum() - copy_pairs[np.arange(len(copies)), owners].sum())
    return {"recall": found / len(copies), "found": found, "copies": len(copies),
            "false_matches": int(np.triu(poem_pairs, 1).sum()) + wrong_copy, "poems_flagged": flagged_poems}


def near_duplicates_before(seed: int, threshold: float) -> dict:
    """The same run with the shingle sizes dedupe used before: word 5-grams, words below five words."""
    sizes = dedupe._shingle_sizes
    dedupe._shingle_sizes = lambda joined, at, owner, n_words: np.where(n_words < dedupe.SHINGLE, 1, dedupe.SHINGLE)
    try:
        return near_duplicates(seed, threshold)
    finally:
        dedupe._shingle_sizes = sizes


# -- PII --------------------------------------------------------------------------------------------

_DIGITS = {**{c: c for c in "0123456789"}, **{chr(0xFF10 + i): str(i) for i in range(10)}}


def pii_kind(pii_type: str, text: str) -> str:
    """mobile / landline for PHONE spans (11 digits starting 1 after a +86, 0086 or 86 prefix), else by type."""
    if pii_type != "PHONE":
        return {"CN_ID": "resident_id", "EMAIL": "email"}.get(pii_type, pii_type)
    digits = "".join(_DIGITS.get(c, "") for c in text)
    if text.lstrip("(（").startswith(("+86", "＋８６", "0086", "００８６", "86 ", "86-")):
        digits = digits[4:] if digits.startswith("0086") else digits[2:]
    return "mobile" if len(digits) == 11 and digits[0] == "1" else "landline"


def pii_scores() -> dict[str, dict]:
    cases = [json.loads(line) for line in PII_CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    tp, fp, fn = Counter(), Counter(), Counter()
    for case in cases:
        gold = Counter((p["type"], p["value"]) for p in case["pii"])
        pred = Counter((m.type, m.text) for m in find_pii(case["text"]))
        for key in gold | pred:
            hit = min(gold[key], pred[key])
            for label in (key[0], pii_kind(*key)):
                tp[label] += hit
                fp[label] += pred[key] - hit
                fn[label] += gold[key] - hit
    out = {}
    for label in ("PHONE", "mobile", "landline", "CN_ID", "EMAIL"):
        out[label] = {"precision": tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 1.0,
                      "recall": tp[label] / (tp[label] + fn[label]) if tp[label] + fn[label] else 1.0,
                      "support": tp[label] + fn[label], "fp": fp[label], "fn": fn[label]}
    out["_cases"] = {"lines": len(cases), "negatives": sum(not c["pii"] for c in cases)}
    return out


# -- demo -----------------------------------------------------------------------------------------

_CLAUSE_END = re.compile("[，。！？；]")


def five_seven_share(samples: list[str]) -> tuple[float, int]:
    """Share of the clauses of complete sample lines that are five or seven characters long, and how many."""
    clauses = []
    for text in samples:
        for line in text.split("\n")[:-1]:  # the last line was cut by the token budget
            clauses += [c for c in _CLAUSE_END.split(line.strip()) if c]
    return (sum(len(c) in (5, 7) for c in clauses) / len(clauses) if clauses else 0.0), len(clauses)


def demo_run(minutes: float) -> dict:
    """The issue's demo command in a fresh workspace (no serving); its test-split figures and samples."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "llmkit", "demo", "--act", "scratch", "--data", str(POETRY), "--minutes",
               f"{minutes:g}", "--no-serve", "--json"]
        env = {**os.environ, "LLMKIT_HOME": tmp, "PYTHONPATH": str(ROOT / "src")}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"bench/chinese.py: the demo failed ({out.returncode}):\n{out.stderr[-3000:]}")
        scratch = json.loads(out.stdout)["scratch"]
    samples = [s["prompt"] + s["completion"] for s in scratch["samples"]]
    share, clauses = five_seven_share(samples)
    return {"minutes": minutes, "seconds": round(time.perf_counter() - t0, 1), "steps": scratch["steps"],
            "bits_per_byte": scratch["evaluation"]["bits_per_byte"], "perplexity": scratch["evaluation"]["perplexity"],
            "samples": samples, "five_seven_share": share, "clauses": clauses}


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", default=",".join(map(str, VOCABS)), help="comma-separated BPE vocabulary sizes")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "chinese_chars_per_token.png",
                        help="where the characters-per-token curve is written")
    parser.add_argument("--demo-minutes", type=float, default=3.0,
                        help="training budget of the demo run (the issue's command uses 3; 0 skips the demo)")
    args = parser.parse_args()
    if not POETRY.exists():
        sys.exit(f"bench/chinese.py: {POETRY} is missing; it holds the chinese_poetry data this bench measures")
    vocabs = [int(v) for v in args.vocab.split(",")]

    rows = tokenizer_curve(vocabs, POETRY)
    plot_curve(rows, args.plot)
    print("characters per token on the val split (no separators); before = GPT-2 pre-tokens, same train split")
    print(f"{'vocab':>6} {'val':>6} {'before':>7} {'train':>6} {'n-grams':>8} {'any n-gram':>10}   (train: the tokenizer on "
          "the text it was trained on; n-grams: the train split's frequent 2-4-grams, val cut optimally; punctuation "
          "apart, or any)")
    for r in rows:
        print(f"{r['vocab']:>6} {r['cpt_val']:>6.3f} {r['cpt_val_gpt2']:>7.3f} {r['cpt_train']:>6.3f} "
              f"{r['cpt_val_ngrams_apart']:>8.3f} {r['cpt_val_ngrams']:>10.3f}")
    print(f"  val: {rows[0]['val_records']} records, {rows[0]['val_poems']} of them hold Chinese; curve: {args.plot}")

    threshold = DataConfig().near_threshold
    near = near_duplicates(0, threshold)
    before = near_duplicates_before(0, threshold)
    spread = [near_duplicates(seed, threshold) for seed in range(1, 5)]
    print(f"\nnear duplicates at the default threshold {threshold}: 200 Tang poems + 50 one-character copies")
    print(f"  seed 0: recall {near['recall']:.2f} ({near['found']}/50), false matches {near['false_matches']}"
          f"   (before, word 5-grams: recall {before['recall']:.2f}, false matches {before['false_matches']})")
    print("  seeds 1-4: recall " + ", ".join(f"{s['recall']:.2f}" for s in spread)
          + "; false matches " + ", ".join(str(s["false_matches"]) for s in spread))

    pii = pii_scores()
    print(f"\nChinese PII ({pii['_cases']['lines']} lines, {pii['_cases']['negatives']} hard negatives)")
    print(f"{'type':<10} {'support':>7} {'fp':>3} {'fn':>3} {'precision':>9} {'recall':>7}")
    for label, s in pii.items():
        if not label.startswith("_"):
            print(f"{label:<10} {s['support']:>7} {s['fp']:>3} {s['fn']:>3} {s['precision']:>9.3f} {s['recall']:>7.3f}")

    demo = demo_run(args.demo_minutes) if args.demo_minutes > 0 else None
    if demo is not None:
        print(f"\ndemo --data {POETRY} --minutes {demo['minutes']:g}: {demo['steps']} steps, {demo['seconds']:.0f} s in all")
        print(f"  test split: {demo['bits_per_byte']:.3f} bits per byte, perplexity {demo['perplexity']:.1f} (characters as tokens)")
        print(f"  clauses of five or seven characters: {demo['five_seven_share']:.2f} of {demo['clauses']}")
        for sample in demo["samples"]:
            print("  | " + sample.replace("\n", " / "))

    print(json.dumps({
        "chars_per_token_val": {str(r["vocab"]): round(r["cpt_val"], 4) for r in rows},
        "chars_per_token_val_gpt2_pretokens": {str(r["vocab"]): round(r["cpt_val_gpt2"], 4) for r in rows},
        "chars_per_token_train": {str(r["vocab"]): round(r["cpt_train"], 4) for r in rows},
        "chars_per_token_val_ngram_vocabulary": {str(r["vocab"]): round(r["cpt_val_ngrams_apart"], 4) for r in rows},
        "chars_per_token_val_ngram_vocabulary_any": {str(r["vocab"]): round(r["cpt_val_ngrams"], 4) for r in rows},
        "near_dup_recall": round(near["recall"], 4), "near_dup_false_matches": near["false_matches"],
        "near_dup_recall_seeds_1_4": [round(s["recall"], 4) for s in spread],
        "near_dup_recall_before": round(before["recall"], 4),
        "pii_precision": {k: round(v["precision"], 4) for k, v in pii.items() if not k.startswith("_")},
        "pii_recall": {k: round(v["recall"], 4) for k, v in pii.items() if not k.startswith("_")},
        "curve_png": str(args.plot),
        "demo_bpb": round(demo["bits_per_byte"], 4) if demo else None,
        "demo_minutes": args.demo_minutes, "demo_steps": demo["steps"] if demo else None,
        "demo_five_seven_share": round(demo["five_seven_share"], 4) if demo else None,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
