"""Cleaning: what survives into a dataset and what does not, for English and Chinese alike."""

from __future__ import annotations

import json
import random
import unicodedata

from llmkit.data.clean import chunk_document, clean_text, json_text


def test_unicode_is_nfc_so_equal_text_is_equal_bytes():
    decomposed = "Cafe\u0301 \u00e9t\u00e9"  # e + combining acute
    assert clean_text(decomposed) == "Caf\u00e9 \u00e9t\u00e9"
    assert unicodedata.is_normalized("NFC", clean_text("\u1100\u1161 한국어"))


def test_control_characters_zero_width_space_and_bom_are_removed():
    assert clean_text("\ufeffa\x00b\x07c\x1bd\u200be\x7f\x9ff") == "abcdef"
    assert clean_text("a\x00b\x07c\x1bd\x0be\x0cf\x7fg\x1f") == "abcdefg"  # ASCII text has its own fast path


def test_cleaned_text_is_quoted_exactly_as_json_does():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0, 128)] + ["\u2028", "\x85", "\u00e9", "\U0001f600", "\ufeff", "\u3000"]
    for _ in range(500):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for keep in (True, False):
            text = clean_text(raw, keep_newlines=keep)
            assert json_text(text) == json.dumps(text, ensure_ascii=False)


def test_joiners_survive_because_words_and_emoji_need_them():
    persian = "می\u200cخواهم"  # ZWNJ inside a Persian word
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_text(persian) == persian
    assert clean_text(family) == family


def test_lm_keeps_newlines_and_indentation_but_trims_line_ends_and_blank_runs():
    text = "\n\ndef f():\r\n    return 1   \r\n\n\n\n\nprint(f())\t\n\n"
    assert clean_text(text, keep_newlines=True) == "def f():\n    return 1\n\nprint(f())"


def test_classify_folds_all_whitespace_to_single_spaces():
    assert clean_text("  Free\tentry\n\nin 2 a  wkly comp ", keep_newlines=False) == "Free entry in 2 a wkly comp"


def test_odd_spaces_and_line_separators_become_plain_ones():
    assert clean_text("a\u00a0b\u3000c\u2028d\u2029e\x85f") == "a b c\nd\ne\nf"


def test_chinese_text_passes_through_unchanged():
    poem = "床前明月光，\n疑是地上霜。\n舉頭望明月，\n低頭思故鄉。"
    assert clean_text(poem) == poem
    assert clean_text("床前明月光，　疑是地上霜。", keep_newlines=False) == "床前明月光， 疑是地上霜。"


def test_long_documents_are_cut_at_paragraphs_near_the_chunk_size():
    paragraphs = [f"Paragraph {i}.\n" + "word " * 50 for i in range(40)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    pieces = chunk_document(text, 1000)
    assert len(pieces) > 5
    assert all(500 <= len(p) <= 1000 for p in pieces[:-1])
    assert all(p.startswith("Paragraph") for p in pieces)  # every cut fell on a paragraph break
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")


def test_a_document_without_line_breaks_is_still_cut():
    pieces = chunk_document("x" * 2500, 1000)
    assert [len(p) for p in pieces] == [1000, 1000, 500]
    assert chunk_document("short", 1000) == ["short"]
    assert chunk_document("abc", 0) == ["abc"]
