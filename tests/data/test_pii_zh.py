"""Chinese PII on a labelled set of its own (pii_cases_zh.jsonl): mainland mobile and landline numbers, resident
IDs and e-mail addresses, some written in full-width characters, against hard negatives that look like them
(dates, amounts, order and tracking numbers, ISBNs, poem numbers, timestamps, IDs with a wrong check digit)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmkit.data.pii import PII_TYPES, find_pii, redact

CASES = [json.loads(line) for line in Path(__file__).with_name("pii_cases_zh.jsonl").read_text(encoding="utf-8").splitlines()
         if line.strip()]
KINDS = ("mobile", "landline", "resident_id", "email")
_DIGITS = {**{c: c for c in "0123456789"}, **{chr(0xFF10 + i): str(i) for i in range(10)}}


def kind_of(pii_type: str, text: str) -> str:
    """The kind of a detected span: a phone number is a mobile when it is 11 digits starting with 1 after
    any +86 / 0086 / 86 country prefix, a landline otherwise."""
    if pii_type != "PHONE":
        return {"CN_ID": "resident_id", "EMAIL": "email"}.get(pii_type, pii_type)
    digits = "".join(_DIGITS.get(c, "") for c in text)
    prefixed = text.lstrip("(（").startswith(("+86", "＋８６", "0086", "００８６", "86 ", "86-"))
    if prefixed:
        digits = digits[4:] if digits.startswith("0086") else digits[2:]
    return "mobile" if len(digits) == 11 and digits[0] == "1" else "landline"


@pytest.fixture(scope="module")
def scores() -> tuple[Counter, Counter, Counter]:
    """(tp, fp, fn) per type and per kind; a detection counts when type and text agree with a label."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for case in CASES:
        gold = Counter((p["type"], p["value"]) for p in case["pii"])
        pred = Counter((m.type, m.text) for m in find_pii(case["text"]))
        for key in gold | pred:
            hit = min(gold[key], pred[key])
            for label in (key[0], kind_of(*key)):
                tp[label] += hit
                fp[label] += pred[key] - hit
                fn[label] += gold[key] - hit
    return tp, fp, fn


def test_the_set_has_positives_of_every_kind_and_hard_negatives():
    per_kind = Counter(p["kind"] for c in CASES for p in c["pii"])
    assert min(per_kind[k] for k in KINDS) >= 40, per_kind
    assert sum(not c["pii"] for c in CASES) >= 200
    assert sum(any("\uff10" <= ch <= "\uff5e" for ch in p["value"]) for c in CASES for p in c["pii"]) >= 40  # full width
    for case in CASES:
        for p in case["pii"]:
            assert p["value"] in case["text"] and p["type"] in PII_TYPES and kind_of(p["type"], p["value"]) == p["kind"]


@pytest.mark.parametrize("label", ["PHONE", "CN_ID", "EMAIL", "mobile", "landline"])
def test_precision_and_recall_per_type(label, scores):
    tp, fp, fn = scores
    precision = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
    recall = tp[label] / (tp[label] + fn[label])
    assert precision >= 0.95, f"{label} precision {precision:.3f} (tp={tp[label]}, fp={fp[label]})"
    assert recall >= 0.95, f"{label} recall {recall:.3f} (tp={tp[label]}, fn={fn[label]})"


def test_no_hard_negative_is_flagged():
    flagged = [(c["text"], [(m.type, m.text) for m in find_pii(c["text"])]) for c in CASES if not c["pii"]]
    assert [f for f in flagged if f[1]] == []


def test_full_width_spans_are_reported_and_redacted_as_written():
    text = "邮箱ｌｉ．ｎａ＠ｑｑ．ｃｏｍ，手机１３８００１３８０００，座机（０１０）６２３４５６７８。"
    assert [(m.type, m.text) for m in find_pii(text)] == [
        ("EMAIL", "ｌｉ．ｎａ＠ｑｑ．ｃｏｍ"), ("PHONE", "１３８００１３８０００"), ("PHONE", "（０１０）６２３４５６７８")]
    assert redact(text) == "邮箱<EMAIL>，手机<PHONE>，座机<PHONE>。"
