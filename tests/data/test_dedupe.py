"""Deduplication: what counts as the same text, exactly and nearly, in English and Chinese."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.dedupe import NUM_PERM, NearDuplicateIndex, exact_key, jaccard, signature, signatures

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
