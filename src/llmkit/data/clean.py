"""Text cleaning: Unicode NFC and width, control characters out, whitespace normalized; and the per-record stage.

Width: full-width Latin letters and digits (ＡＢＣ１２３, common in Chinese and Japanese text) become the
ASCII ones, so "ＧＰＴ４" and "GPT4" are one word to the tokenizer, dedupe and PII; so does full-width
punctuation inside such a full-width word or number (ＧＰＴ－４ｏ, １，２３４．５６, １０：３０, ｔｅｓｔ＠ｑｑ．ｃｏｍ, and a
％ after a full-width digit): "1，234．56" would be neither the Chinese nor the ASCII way to write a number.
Half-width katakana and half-width CJK punctuation (ｶﾞ ｡) become their full-width forms. Other full-width
punctuation (，。！？：；「」『』（）＠．) stays as written: in Chinese it is the normal form, not a variant. That
is NFKC for the width forms only: NFKC as a whole would also turn "，" into "," and "²" into "2".

For `lm` (and chat contents) newlines and leading indentation survive, because code and verse
depend on them; for classification all whitespace folds to single spaces.

`clean_chunk` is everything `prepare` does to one record that depends on that record alone: clean,
length filters, PII, the dedupe keys and the split. Being a pure function of its input, it runs in
worker processes; the decisions that need earlier records (is this a duplicate?) stay in the caller.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.data.dedupe import exact_keys, signatures
from llmkit.data.pii import count_by_type, find_pii, redact
from llmkit.data.splits import assign_split, stratified_split

# C0/C1 controls except \t and \n, the zero-width space and word joiner, and the BOM. The zero-width
# (non-)joiners U+200C/U+200D stay: Persian and Indic spelling and emoji sequences need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_ODD_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ODD_NEWLINE = re.compile(r"[\x85\u2028\u2029]")  # NEL and the Unicode line/paragraph separators
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")
# Width forms (U+FF10-FF19, FF21-FF3A, FF41-FF5A are full-width digits and letters, FF61-FF9F half-width
# CJK punctuation and katakana with their sound marks).
_WIDTH_FORMS = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff61-\uff9f]")
_HALF_WIDTH_RUN = re.compile("[\uff61-\uff9f]+")
# Full-width ASCII punctuation (U+FF01-FF5E less the letters and digits) between two full-width letters or digits,
# or a ％ after a full-width digit: part of the word or number the width folding turns into ASCII.
_FW_ALNUM = "\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_FW_PUNCT_IN_WORD = re.compile(f"(?<=[{_FW_ALNUM}])[\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff5e](?=[{_FW_ALNUM}])"
                               "|(?<=[\uff10-\uff19])\uff05")
_ASCII_WIDTH = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for c in range(r[0], r[1] + 1)}
_PLAIN_ASCII = bytes(range(32, 127)) + b"\t\n"
# What json.dumps(ensure_ascii=False) escapes in cleaned text, whose only control characters are \t and \n.
_JSON_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t"))


def clean_text(text: str, keep_newlines: bool = True) -> str:
    ascii_text = text.isascii()
    if not ascii_text:
        text = unicodedata.normalize("NFC", text)
        if _WIDTH_FORMS.search(text):
            text = _normalize_width(text)
        text = _ODD_SPACE.sub(" ", text)
        text = _ODD_NEWLINE.sub("\n", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # ASCII text rarely holds a control character; deleting the allowed bytes finds out ~7x faster than the regex.
    if not ascii_text or text.encode("ascii").translate(None, _PLAIN_ASCII):
        text = _CONTROL.sub("", text)
    if not keep_newlines:
        return _ANY_SPACE.sub(" ", text).strip()
    # Substring tests first: they run at memory speed, and most texts need neither substitution.
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _MANY_BLANK.sub("\n\n", text)
    return text.strip("\n")


def clean_classifier_input(text: str) -> str:
    """A text given to a classifier at predict, serve or explain time, cleaned as `prepare` cleaned its training
    texts: full-width ＶＩＰ typed through a Chinese IME reads as the VIP the model learned, and line breaks fold.
    Language models' prompts stay as typed: they are the user's words, which the answer may quote."""
    return clean_text(text, keep_newlines=False)


def _normalize_width(text: str) -> str:
    text = _FW_PUNCT_IN_WORD.sub(lambda m: chr(ord(m.group()) - 0xFEE0), text)
    text = text.translate(_ASCII_WIDTH)
    # NFKC composes a half-width kana with the sound mark after it (ｶﾞ -> ガ), which a table could not.
    return _HALF_WIDTH_RUN.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)


def chunk_document(text: str, chunk_chars: int) -> list[str]:
    """Cut a long document at line boundaries into pieces of about chunk_chars.

    One large file (tiny shakespeare) would otherwise be a single record: it could not be split
    into train/val, and near-duplicate detection would see only whole copies.
    """
    if chunk_chars <= 0 or len(text) <= chunk_chars:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        if end < len(text):
            # Prefer a paragraph break, then a line break, in the back half of the window.
            cut = text.rfind("\n\n", start + chunk_chars // 2, end)
            if cut == -1:
                cut = text.rfind("\n", start + chunk_chars // 2, end)
            end = cut + 1 if cut != -1 else end
        piece = text[start:end].strip("\n")
        if piece:
            pieces.append(piece)
        start = end
    return pieces


# -- the per-record stage ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordOptions:
    """What the per-record stage needs to know; small and picklable, it travels with every chunk."""

    task: str
    min_chars: int
    max_chars: int
    pii: str
    near: bool
    val: float
    test: float
    seed: int
    want_chars: bool


def record_text(rec: dict[str, Any], task: str) -> str:
    if task == "chat":
        return "\n".join(m["content"] for m in rec["messages"])
    if task == "preference":
        return "\n".join(preference_texts(rec))
    return rec["text"]


def preference_texts(rec: dict[str, Any]) -> list[str]:
    """The texts of a preference record (see preference.py) in a fixed order: prompt messages, then chosen
    and rejected, or the completion."""
    answers = [rec["chosen"], rec["rejected"]] if "chosen" in rec else [rec["completion"]]
    return [m["content"] for m in rec["prompt"]] + answers


def preference_kind(rec: dict[str, Any]) -> str:
    """What the manifest counts a preference record as: a pair, or an unpaired desirable/undesirable completion."""
    return "pair" if "chosen" in rec else ("desirable" if rec["label"] else "undesirable")


def clean_chunk(job: tuple[RecordOptions, list[dict]]) -> list[tuple]:
    """Per record: (status, PII counts, JSON line, length, exact key, signature, split, label, chars)."""
    opts, records = job
    results = [_clean_one(rec, opts) for rec in records]
    kept = [i for i, r in enumerate(results) if r[0] == "kept"]
    texts = [results[i][4] for i in kept]
    # Exact keys and signatures of the whole chunk in a few numpy passes.
    sigs = signatures(texts) if opts.near else [None] * len(texts)
    if opts.near and opts.task == "preference":  # a pair's signature is its two sides' (see NearDuplicateIndex)
        sides = {j: results[i][5] for j, i in enumerate(kept) if results[i][5] is not None}
        side_sigs = signatures([t for j in sides for t in sides[j]])
        for n, j in enumerate(sides):
            chosen, rejected = side_sigs[2 * n], side_sigs[2 * n + 1]
            sigs[j] = None if chosen is None or rejected is None else np.concatenate([chosen, rejected])
    for i, key, sig in zip(kept, exact_keys(texts), sigs, strict=True):
        results[i] = (*results[i][:4], key, sig, *results[i][6:])
    return results


def label_line(line: str, old: str, new: str) -> str:
    """A classify record's JSON line, whose label `old` comes first (`sort_keys`), with the label `new` instead."""
    start = len('{"label": ') + len(json.dumps(old, ensure_ascii=False))
    return f'{{"label": {json.dumps(new, ensure_ascii=False)}{line[start:]}'


def json_text(text: str) -> str:
    """json.dumps(text, ensure_ascii=False) for text out of `clean_text`, whose only control characters are
    tab and newline: four substring replacements instead of json's per-character escaping pass."""
    for char, escaped in _JSON_ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return f'"{text}"'


def _clean_one(rec: dict[str, Any], o: RecordOptions) -> tuple:
    if o.task == "chat":
        out: dict[str, Any] = {"messages": [{"role": m["role"], "content": clean_text(m["content"], keep_newlines=True)}
                                            for m in rec["messages"]]}
    elif o.task == "preference":
        out = {key: clean_text(value) if isinstance(value, str) else value for key, value in rec.items() if key != "source"}
        out["prompt"] = [{"role": m["role"], "content": clean_text(m["content"])} for m in rec["prompt"]]
    else:
        out = {"text": clean_text(rec["text"], keep_newlines=o.task == "lm")}
        if o.task == "classify":
            # Spellings of one label ('spam', 'Spam ', 'SPAM') are one class: the record is keyed and split by the
            # folded label, and the caller writes the spelling it chose for the class (see `label_spelling`).
            spelling = " ".join(str(rec["label"]).split())
            out["label"] = spelling.casefold()
    length = len(record_text(out, o.task))
    if length < o.min_chars:
        return ("too_short", None)
    if length > o.max_chars:
        return ("too_long", None)
    pii: Counter | None = None
    if o.pii != "keep":
        for holder, key in _text_slots(out, o.task):
            matches = find_pii(holder[key])
            if matches:
                pii = (pii or Counter()) + Counter(count_by_type(matches))
                if o.pii == "redact":
                    holder[key] = redact(holder[key], matches)
        if pii and o.pii == "drop":
            return ("pii_dropped", pii)
    text = record_text(out, o.task)
    if o.task == "lm":  # json.dumps(out, sort_keys=True, ensure_ascii=False), without its escaping pass
        split_key = f'{{"text": {json_text(text)}}}'
    else:
        split_key = json.dumps(out, sort_keys=True, ensure_ascii=False)
    if o.task == "classify":
        split = stratified_split(split_key, out["label"], o.val, o.test, o.seed)
    elif o.task == "preference":
        # By prompt: every pair and rating of one prompt lands in one split, so held-out reward accuracy
        # is measured on prompts training never saw.
        split = assign_split(json.dumps(out["prompt"], sort_keys=True, ensure_ascii=False), o.val, o.test, o.seed)
    else:
        split = assign_split(split_key, o.val, o.test, o.seed)
    # The record line is the split key's JSON with the source appended: one serialization, not two.
    line = f'{split_key[:-1]}, "source": {json.dumps(rec.get("source"), ensure_ascii=False)}}}\n'
    chars = "".join(set(text)) if o.want_chars and split == "train" else None
    # Preference records are counted per split as pair / desirable / undesirable; a class by its spelling.
    label = preference_kind(out) if o.task == "preference" else spelling if o.task == "classify" else None
    # The text rides in the exact key's place, and a pair's two sides in the signature's, until clean_chunk
    # replaces them.
    sides = None
    if o.task == "preference" and "chosen" in out:
        prompt = "\n".join(m["content"] for m in out["prompt"])
        sides = (f"{prompt}\n{out['chosen']}", f"{prompt}\n{out['rejected']}")
    return ("kept", pii, line, len(text), text, sides, split, label, chars)


def _text_slots(out: dict[str, Any], task: str) -> list[tuple[dict, str]]:
    """(holder, key) of every text of a cleaned record, for PII detection and redaction."""
    if task == "chat":
        return [(m, "content") for m in out["messages"]]
    if task == "preference":
        answers = [k for k in ("chosen", "rejected", "completion") if k in out]
        return [(m, "content") for m in out["prompt"]] + [(out, k) for k in answers]
    return [(out, "text")]
