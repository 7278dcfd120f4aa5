"""Deduplication: what counts as the same text, exactly and nearly, in English and Chinese."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.dedupe import (
    NUM_PERM,
    NearDuplicateIndex,
    exact_key,
    exact_keys,
    jaccard,
    lsh_bands,
    signature,
    signatures,
)

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def passages() -> list[str]:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    return [text[i:i + 3000] for i in range(0, 300_000, 3000)]


def edit_words(text: str, n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    for _ in range(n):
        words[rng.randrange(len(words))] = "zounds"
    return " ".join(words)


def test_exact_key_ignores_case_and_whitespace_only():
    assert exact_key("Hello  World\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello, world")
    assert len(exact_key("x")) == 16


def test_exact_keys_of_a_batch_equal_those_of_each_text():
    rng = random.Random(4)
    alphabet = [*"aB1 .", " ", "  ", "\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x85", "\u3000", "\u00c9"]
    texts = ["", " ", "\n\t", "x"] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    for start in range(0, len(texts), 37):
        batch = texts[start:start + 37]
        assert exact_keys(batch) == [exact_key(t) for t in batch]


def test_a_few_edited_words_keep_a_text_near_its_original(passages):
    a = passages[3]
    assert jaccard(signature(a), signature(a)) == 1.0
    assert jaccard(signature(a), signature(edit_words(a, 3))) >= 0.85
    assert jaccard(signature(a), signature(edit_words(a, 60))) < 0.85
    assert max(jaccard(signature(a), signature(b)) for b in passages[4:20]) < 0.2


def test_chinese_is_shingled_by_character_so_near_copies_are_found():
    poem = "西陸蟬聲唱，南冠客思侵。那堪玄鬢影，來對白頭吟。露重飛難進，風多響易沈。無人信高潔，誰爲表予心。"
    variant = poem.replace("誰爲", "誰為")  # one character differs
    other = "前不見古人，後不見來者。念天地之悠悠，獨愴然而涕下。"
    assert jaccard(signature(poem), signature(variant)) >= 0.7
    assert jaccard(signature(poem), signature(other)) < 0.2


def test_signatures_of_a_batch_equal_those_of_each_text(passages):
    assert signatures([]) == [] and exact_keys([]) == []
    texts = ["", "...", "two words", "one two three four five six", "床前明月光", *passages[:5]]
    batch = signatures(texts)
    assert batch[0] is None and batch[1] is None  # no words, nothing to compare
    for text, sig in zip(texts[2:], batch[2:], strict=True):
        assert sig.dtype == np.uint32 and sig.shape == (NUM_PERM,)
        assert np.array_equal(sig, signature(text))


def test_signatures_depend_only_on_the_text():
    assert np.array_equal(signature("the same words in the same order"), signature("The same words, in the same order!"))


def test_index_flags_near_duplicates_and_keeps_distinct_texts(passages):
    index = NearDuplicateIndex(threshold=0.85)
    assert not any(index.seen_or_add(signature(p)) for p in passages[:30])
    assert index.seen_or_add(signature(edit_words(passages[7], 2)))
    assert not index.seen_or_add(signature(edit_words(passages[8], 80)))
    assert not index.seen_or_add(None)


def test_index_checks_candidates_against_the_threshold(passages):
    # At a threshold of 1.0 only identical shingle sets count, whatever the LSH bands let through.
    index = NearDuplicateIndex(threshold=1.0)
    index.seen_or_add(signature(passages[0]))
    assert not index.seen_or_add(signature(edit_words(passages[0], 1)))
    assert index.seen_or_add(signature(passages[0]))


def test_bands_are_the_ones_datasketch_picks():
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold in [i / 40 for i in range(1, 41)] + [0.85, 0.9, 0.95, 0.99, 0.123]:
        assert lsh_bands(threshold, NUM_PERM) == lsh._optimal_param(threshold, NUM_PERM, 0.05, 0.95), threshold
    assert lsh_bands(0.7, 128, (0.5, 0.5)) == lsh._optimal_param(0.7, 128, 0.5, 0.5)


def test_index_decides_as_a_datasketch_index_with_the_same_bands(passages):
    datasketch = pytest.importorskip("datasketch")
    texts = [edit_words(p, n, seed=i) for i, p in enumerate(passages[:40]) for n in (0, 2, 8, 30)]
    sigs = signatures(random.Random(0).sample(texts, len(texts)))
    for threshold in (0.5, 0.85):
        index = NearDuplicateIndex(threshold)
        lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.05, 0.95))
        assert (index.bands, index.rows) == (lsh.b, lsh.r)
        kept: list[np.ndarray] = []
        for sig in sigs:
            mh = datasketch.MinHash(num_perm=NUM_PERM, hashvalues=sig, scheme="legacy")
            dup = any(jaccard(kept[k], sig) >= threshold for k in lsh.query(mh))
            if not dup:
                lsh.insert(len(kept), mh)
                kept.append(sig)
            assert index.seen_or_add(sig) == dup
        assert 0 < len(kept) < len(sigs)


def _reference_word_hashes(text: str) -> tuple[list[int], list[int]]:
    """The word hashes by their definition, one character at a time."""
    from llmkit.data.dedupe import _MAX_POS, _char_table, _mix

    table = _char_table()
    sums: list[int] = []
    at: list[int] = []
    prev, j = 0, 0
    for i, ch in enumerate(text):
        cp = ord(ch)
        code = int(table[cp]) if cp <= 0xFFFF else (2 if 0x20000 <= cp <= 0x3FFFF else 0)
        if code == 2 or (code == 1 and prev != 1):
            sums.append(0)
            at.append(i)
            j = 0
        if code:
            sums[-1] = (sums[-1] + cp * pow(0x100000001B3, min(j, _MAX_POS - 1) + 1, 2**64)) % 2**64
            j += 1
        prev = code
    return _mix(np.array(sums, dtype=np.uint64)).tolist(), at


def test_word_hashes_follow_their_definition():
    from llmkit.data.dedupe import _word_hashes

    rng = random.Random(3)
    alphabet = "ab_9 .,\n" + "éü\u0301" + "床前明月" + "\U00020001\U0001f600"
    texts = ["", "...", "x" * 5000 + " tail", "a" * 4096 + " b", "".join(rng.choice(alphabet) for _ in range(70_000)),
             "word " * 20_000, "".join(rng.choice(alphabet) for _ in range(300))]
    for text in texts:
        hashes, at = _word_hashes(text)
        assert (hashes.tolist(), at.tolist()) == _reference_word_hashes(text)
