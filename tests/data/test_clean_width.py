"""Width normalisation in cleaning: full-width Latin letters and digits become ASCII, half-width katakana and
CJK punctuation become full-width, and Chinese full-width punctuation stays as written."""

from __future__ import annotations

import unicodedata

from llmkit.data.clean import clean_text


def test_full_width_letters_and_digits_become_ascii():
    assert clean_text("型號：ＧＰＴ－４ｏ，價格１２３元") == "型號：GPT-4o，價格123元"
    assert clean_text("ａｂｃ ＸＹＺ ０９", keep_newlines=False) == "abc XYZ 09"


def test_chinese_punctuation_stays_full_width():
    punctuation = "，。！？：；「」『』（）、《》【】…—“”＠．％＋－～"
    assert clean_text(f"床前明月光{punctuation}疑是地上霜") == f"床前明月光{punctuation}疑是地上霜"
    # which NFKC as a whole would have turned into ASCII
    assert unicodedata.normalize("NFKC", "，！？（）") == ",!?()"


def test_half_width_katakana_and_punctuation_become_full_width_with_their_sound_marks():
    assert clean_text("ｶﾞｷﾞｸﾞ ｺｰﾋｰ｡｢ﾊﾟﾝ｣､") == "ガギグ コーヒー。「パン」、"


def test_other_compatibility_characters_keep_their_meaning():
    assert clean_text("x² ① ﬁ ㎏ ™ ￥5") == "x² ① ﬁ ㎏ ™ ￥5"


def test_width_folding_is_idempotent_and_mixes_with_nfc():
    text = "Cafe\u0301 ＣＡＦＥ ｶﾞ"
    once = clean_text(text)
    assert once == "Caf\u00e9 CAFE ガ" and clean_text(once) == once
