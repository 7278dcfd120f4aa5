"""Which encoding a file that is not UTF-8 was saved in, to name in the error: Chinese files are often GBK
(GB18030) or Big5, and Latin-1, which the message used to suggest, decodes any bytes, so taking the advice
registered mojibake.

Python has no detector that is right on short CJK samples (charset_normalizer calls a Big5 poem cp932). Each
CJK candidate is judged instead by how much of the text, decoded with it, is made of the characters people
mostly write in that encoding (its symbols and its first, most used, level of characters): a Big5 file
decoded as GB18030 decodes without error, but into rare characters."""

from __future__ import annotations

# encoding -> (its base character set, lead-byte ranges of that set's symbols and most used characters)
COMMON = {
    "gb18030": ("Simplified Chinese", "gb2312", ((0xA1, 0xA3), (0xB0, 0xD7))),  # GB2312 level 1: 3,755 hanzi
    "big5": ("Traditional Chinese", "big5", ((0xA1, 0xA3), (0xA4, 0xC6))),  # Big5's frequently used characters
    "shift_jis": ("Japanese", "shift_jis", ((0x81, 0x83), (0x88, 0x98))),  # kana and JIS level-1 kanji
    "euc-kr": ("Korean", "euc-kr", ((0xA1, 0xA3), (0xB0, 0xC8))),  # the 2,350 Hangul syllables
}


def likely_encodings(sample: bytes) -> list[tuple[str, str]]:
    """(encoding, what it is for) that decode `sample` into plausible text, likeliest first; [] when none does.

    CJK candidates need at least 60 % of the non-ASCII characters common ones, and are listed when within 10 %
    of the best (Korean and Chinese share a byte layout: a short sample can fit both); else cp1252, when it
    decodes (Western European text: café)."""
    cut = sample.rfind(b"\n")
    sample = sample[:cut + 1] if cut > 0 else sample  # a character cut at the end of the sample is no evidence
    scores = {}
    for encoding, (_, charset, ranges) in COMMON.items():
        try:
            text = sample.decode(encoding)
        except UnicodeDecodeError:
            continue
        wide = [c for c in text if ord(c) > 0x7F]
        if wide:
            scores[encoding] = sum(_common(c, charset, ranges) for c in wide) / len(wide)
    best = max(scores.values(), default=0.0)
    if best >= 0.6:
        ranked = sorted((e for e, s in scores.items() if s >= 0.9 * best), key=lambda e: -scores[e])
        return [(e, COMMON[e][0]) for e in ranked]
    try:
        sample.decode("cp1252")
    except UnicodeDecodeError:
        return []
    return [("cp1252", "Western European")]


def _common(char: str, charset: str, ranges) -> bool:
    try:
        encoded = char.encode(charset)
    except UnicodeEncodeError:
        return False
    return len(encoded) == 2 and any(lo <= encoded[0] <= hi for lo, hi in ranges)
