"""BPE pre-tokenization for Chinese: CJK runs merge into words, punctuation stays apart and takes the line
break after it, held-out poems take fewer tokens; English and code keep GPT-2's pre-tokens and fast path."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from llmkit.data.encoder import FastEncoder
from llmkit.data.tokenizer import CJK_SHARE, SPECIAL_TOKENS, build_tokenizer, cjk_share

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
POEMS = SHARED / "chinese_poetry" / "poet.tang.0.json"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
pytestmark = pytest.mark.skipif(not POEMS.exists(), reason="shared data not present")

_HAN = re.compile(r"[\u4e00-\u9fff]")
_CJK_PUNCT = re.compile(r"[\u3001-\u3003\uff01-\uff0f\uff1a-\uff20]")


@pytest.fixture(scope="module")
def poems() -> tuple[list[str], list[str]]:
    """(train, held out): every tenth poem of the first 1,000 Tang poems is held out."""
    rows = json.loads(POEMS.read_text(encoding="utf-8"))
    texts = ["\n".join(r["paragraphs"]) for r in rows if r["paragraphs"]]
    return [t for i, t in enumerate(texts) if i % 10], texts[::10]


@pytest.fixture(scope="module")
def chinese(poems):
    return build_tokenizer("bpe:3000", poems[0])


def gpt2_bpe(texts: list[str], vocab: int) -> Tokenizer:
    """The byte-level BPE as it was trained before the CJK pre-tokens, for comparison."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def chars_per_token(tok: Tokenizer, texts: list[str]) -> float:
    return sum(map(len, texts)) / sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def test_the_share_of_cjk_characters_picks_the_pre_tokenizer(poems, chinese):
    assert cjk_share(poems[0]) > 0.7 and cjk_share(["plain English, and code: x = f(1)"] * 3) == 0
    assert cjk_share(["中" * 5 + "e" * 95]) == pytest.approx(0.05) and 0.05 < CJK_SHARE
    assert json.loads(chinese.backend.to_str())["pre_tokenizer"]["type"] == "Sequence"


def test_punctuation_never_merges_with_characters_and_takes_the_line_break(chinese):
    pieces = [chinese.token_text(i) for i in range(len(chinese))]
    assert "。\n" in pieces and "，" in pieces
    assert not [p for p in pieces if _HAN.search(p) and _CJK_PUNCT.search(p)]
    words = [p for p in pieces if len(p) >= 2 and all(_HAN.match(c) for c in p)]
    assert len(words) > 300  # two- and three-character words did merge
    ids = chinese.backend.encode("床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。").ids
    assert [chinese.token_text(i) for i in ids].count("。\n") == 1


def test_held_out_poems_take_fewer_tokens_than_with_gpt2_pre_tokens(poems, chinese):
    train, held_out = poems
    before = chars_per_token(gpt2_bpe(train, 3000), held_out)
    after = chars_per_token(chinese.backend, held_out)
    assert after >= 1.04 * before, (before, after)  # measured: 0.99 -> 1.05 at this size


def test_mixed_text_round_trips_and_latin_words_stay_apart_from_han(chinese):
    text = "使用 Python编程：「コーヒー」と々——“Hi”, it's 12 o'clock.\n\n全角ＡＢＣ１２３。"
    assert chinese.backend.decode(chinese.backend.encode(text).ids) == text
    pre = [p for p, _ in chinese.backend.pre_tokenizer.pre_tokenize_str("Python编程")]
    assert len(pre) == 2  # GPT-2's \p{L}+ would glue them into one pre-token


def test_the_encoder_gives_the_tokenizers_ids_for_the_cjk_tokenizer(poems, chinese):
    rng = random.Random(7)
    odd = ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x3000, 0x3100), rng.randrange(0x4e00, 0x4f00),
                                   rng.randrange(0xff00, 0xff60), 0x2026, 0x2014, 10, 32])) for _ in range(60)) for _ in range(30)]
    texts = poems[1][:40] + ["mixed 中文 and English", "，。\n\n", "plain ASCII, it's 12 o'clock.\n\n  x"] + odd
    encoder = FastEncoder(chinese.backend, chinese.eos_token_id)
    assert encoder.mode == "bpe"  # the fast path knows the CJK pre-tokens, not only GPT-2's
    got = encoder.encode(texts)
    want = [i for e in chinese.backend.encode_batch(texts, add_special_tokens=False) for i in [chinese.eos_token_id, *e.ids]]
    assert np.array_equal(got, want)
    assert encoder.mode == "bpe"  # its own spot check never had to fall back to the library


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared data not present")
def test_english_keeps_gpt2_pre_tokens_the_same_merges_and_the_fast_path():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:150_000]
    texts = [text[i:i + 1500] for i in range(0, len(text), 1500)]
    tok = build_tokenizer("bpe:500", texts)
    assert json.loads(tok.backend.to_str())["pre_tokenizer"]["type"] == "ByteLevel"
    assert json.loads(tok.backend.to_str())["model"] == json.loads(gpt2_bpe(texts, 500).to_str())["model"]
    assert FastEncoder(tok.backend, tok.eos_token_id).mode == "bpe"
