"""`prepare --task classify` on labels as people type them: 'spam', 'Spam ', 'SPAM' are one class written as its
most used spelling, and a text repeated under another label is counted and named, not dropped without a word."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SPLITS = ("train", "val", "test")


def run(root: Path, inputs: list[Path], **options):
    ws = Workspace.open(root / "ws")
    return prepare(DataConfig(inputs=[str(p) for p in inputs], task="classify", tokenizer="char", **options), ws,
                   Registry.for_workspace(ws.root))


def records(ds) -> list[dict]:
    out = []
    for split in SPLITS:
        with open(ds.path / "records" / f"{split}.jsonl", encoding="utf-8") as fh:
            out += [{**json.loads(line), "split": split} for line in fh]
    return out


def test_labels_differing_in_case_and_spacing_are_one_class_in_its_most_used_spelling(tmp_path):
    spellings = ["Spam "] + ["spam"] * 30 + ["SPAM"] * 5 + ["ham"] * 20 + [" Ham"] * 3 + ["very  good"] * 10
    rows = [{"text": f"message number {i} " + "x" * (i % 7), "label": lab} for i, lab in enumerate(spellings)]
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = run(tmp_path, [path])
    recs = records(ds)
    assert len(recs) == len(rows)  # none lost on the way
    assert sorted({r["label"] for r in recs}) == ["ham", "spam", "very good"]
    assert sum(r["label"] == "spam" for r in recs) == 36
    m = ds.manifest
    assert m["label_set"] == ["ham", "spam", "very good"]
    assert sum(m["labels"][s].get("spam", 0) for s in SPLITS) == 36
    assert m["label_spellings"] == {"spam": {"Spam": 1, "spam": 30, "SPAM": 5}, "ham": {"ham": 20, "Ham": 3}}


def test_the_split_of_a_record_does_not_depend_on_how_its_label_is_spelled(tmp_path):
    rows = [{"text": f"record {i} with words", "label": "yes"} for i in range(40)]
    rows += [{"text": f"other {i} with words", "label": "no"} for i in range(40)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lower, upper = tmp_path / "a" / "d.jsonl", tmp_path / "b" / "d.jsonl"
    lower.write_text("\n".join(json.dumps(r) for r in rows))
    upper.write_text("\n".join(json.dumps({**r, "label": r["label"].upper()}) for r in rows))
    a = {r["text"]: r["split"] for r in records(run(tmp_path / "a", [lower]))}
    b = {r["text"]: r["split"] for r in records(run(tmp_path / "b", [upper]))}
    assert a == b


def test_a_text_repeated_under_another_label_is_counted_and_named(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\nfree money now,spam\nsee you later,ham\ncall me,ham\n")
    more = tmp_path / "more.csv"
    more.write_text("text,label\nFree money  now,ham\ncall me,HAM\nanother one,spam\n")
    ds = run(tmp_path, [train, more])
    m = ds.manifest
    assert m["counts"]["duplicates_exact"] == 2
    assert m["label_conflicts"]["count"] == 1
    assert m["label_conflicts"]["examples"] == [
        f"{more}:2: the same text was kept with the label 'spam', this one says 'ham'"]
    texts = [r["text"].lower() for r in records(ds)]
    assert len(texts) == len(set(texts)) == 4  # no twin across train/val/test
