"""Near duplicates in text without spaces: character n-grams sized by the text's length, measured on Tang poems
with one character changed; text with spaces keeps its word 5-grams."""

from __future__ import annotations

import difflib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import DataConfig
from llmkit.data.dedupe import (
    _A,
    _B,
    CJK_CHARS_PER_WORD,
    SHINGLE,
    NearDuplicateIndex,
    _char_table,
    _mix,
    _word_hashes,
    jaccard,
    signature,
    signatures,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TANG = SHARED / "chinese_poetry" / "poet.tang.0.json"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def reference_signature(text: str) -> np.ndarray | None:
    """The signature by its definition, one text at a time: n-grams of word hashes, n = 5 for text with
    spaces, 1 below five words, and for mostly-CJK text one per CJK_CHARS_PER_WORD characters (1 to 5)."""
    lowered = text.lower()
    hashes, at = _word_hashes(lowered)
    if not len(hashes):
        return None
    cjk = sum(_char_table()[ord(lowered[i])] == 2 for i in at.tolist() if ord(lowered[i]) <= 0xFFFF)
    n = 1 if len(hashes) < SHINGLE else SHINGLE
    if len(hashes) >= SHINGLE and 2 * cjk > len(hashes):
        n = min(SHINGLE, max(1, len(hashes) // CJK_CHARS_PER_WORD))
    words = [int(h) for h in hashes]
    if n == 1:
        shingles = np.array(words, dtype=np.uint64)
    else:
        folded = []
        for i in range(len(words) - n + 1):
            x = words[i]
            for w in words[i + 1:i + n]:
                x = ((x * 0x9E3779B97F4A7C15) & (2**64 - 1)) ^ w
            folded.append(x)
        shingles = _mix(np.array(folded, dtype=np.uint64))
    with np.errstate(over="ignore"):
        return ((_A[:, None] * shingles[None, :] + _B[:, None]).min(axis=1) >> np.uint64(32)).astype(np.uint32)


def tang_near_copies(n_poems: int = 200, n_copies: int = 50, seed: int = 0) -> tuple[list[str], list[str], list[int]]:
    """(poems, copies, the poem each copy came from): distinct Tang poems, and copies of some with one
    Chinese character replaced by another from the corpus.

    The corpus holds variant editions of a few poems (罇/尊 in one line); a poem within edit ratio 0.8 of
    one already drawn is not drawn, so two drawn poems are different poems and any match between them is false.
    """
    rows = json.loads(TANG.read_text(encoding="utf-8"))
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


@pytest.mark.skipif(not TANG.exists(), reason="shared data not present")
def test_one_changed_character_in_tang_poems_is_found_without_false_matches():
    poems, copies, owners = tang_near_copies()
    threshold = DataConfig().near_threshold
    index = NearDuplicateIndex(threshold)
    assert not any(index.seen_or_add(s) for s in signatures(poems))  # no two different poems match
    found = sum(index.seen_or_add(s) for s in signatures(copies))
    assert found / len(copies) >= 0.95, found  # measured: 50 of 50 (word 5-grams found 6)
    # and every copy matches its own poem only
    p, c = np.stack(signatures(poems)), np.stack(signatures(copies))
    similar = (c[:, None, :] == p[None, :, :]).mean(axis=2) >= threshold
    assert all(similar[k].sum() <= 1 and (similar[k].sum() == 0 or similar[k, owners[k]]) for k in range(len(copies)))


@pytest.mark.skipif(not TANG.exists(), reason="shared data not present")
def test_signatures_follow_their_definition_for_every_shingle_size():
    poems, copies, _ = tang_near_copies(60, 10)
    long_chinese = "".join(poems[:8])  # several hundred characters: 5-grams again
    english = SHAKESPEARE.read_text(encoding="utf-8")[:6000] if SHAKESPEARE.exists() else "to be or not " * 50
    texts = [*poems[:40], *copies, long_chinese, long_chinese[:130], english[:3000], english[3000:],
             "mixed English text with 中文 inside, still mostly words with spaces", "短句", "二三四五六", ""]
    batch = signatures(texts)
    for text, sig in zip(texts, batch, strict=True):
        want = reference_signature(text)
        assert (sig is None and want is None) or np.array_equal(sig, want), text[:30]


def test_long_chinese_texts_keep_long_shingles_and_stay_apart():
    rng = random.Random(3)
    common = [chr(c) for c in range(0x4E00, 0x4E00 + 300)]  # 300 characters: two random texts share most of them
    a, b = ("".join(rng.choice(common) for _ in range(600)) for _ in range(2))
    assert jaccard(signature(a), signature(b)) < 0.1  # a character set alone would call them near-identical
    edited = a[:300] + ("丁" if a[300] != "丁" else "七") + a[301:]
    assert jaccard(signature(a), signature(edited)) >= 0.85
