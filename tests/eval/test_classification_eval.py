"""Classifier metrics against hand-counted confusion matrices; the classifier report and its plots."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import EvalConfig
from llmkit.errors import UserError
from llmkit.eval import evaluate
from llmkit.eval.classification import classification_metrics, expected_calibration_error
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def _probs(preds: list[int], n: int, confidence: float = 0.9) -> np.ndarray:
    p = np.full((len(preds), n), (1 - confidence) / (n - 1))
    p[np.arange(len(preds)), preds] = confidence
    return p


def test_metrics_match_a_hand_counted_confusion_matrix():
    # true \\ predicted   a  b  c
    #   a                 3  1  0
    #   b                 0  2  2
    #   c                 1  0  1
    golds = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 1, 2, 2, 0, 2]
    m = classification_metrics(golds, _probs(preds, 3), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert (m["precision_a"], m["recall_a"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4))
    assert (m["precision_b"], m["recall_b"]) == (pytest.approx(2 / 3), pytest.approx(2 / 4))
    assert (m["precision_c"], m["recall_c"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    f1 = {k: 2 * p * r / (p + r) for k, p, r in (("a", 3 / 4, 3 / 4), ("b", 2 / 3, 1 / 2), ("c", 1 / 3, 1 / 2))}
    assert m["f1_b"] == pytest.approx(f1["b"])
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["micro_f1"] == pytest.approx(6 / 10)  # single-label: micro = accuracy
    assert m["macro_precision"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 3) / 3)
    assert (m["support_a"], m["support_b"], m["support_c"]) == (4, 4, 2)


def test_binary_roc_auc_and_calibration_by_hand():
    golds = [0, 0, 1, 1]
    spam = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(golds, np.stack([1 - spam, spam], 1), ["ham", "spam"])
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (spam, ham) pairs ranked right
    # Every prediction made with confidence 0.9; 6 of 10 right: ECE = |0.6 - 0.9| = 0.3.
    golds10 = [0] * 6 + [1] * 4
    probs = _probs([0] * 10, 2)
    assert expected_calibration_error(np.array(golds10), probs) == pytest.approx(0.3)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], 0

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        if tag == "img":
            self.images.append(dict(attrs))


def test_classifier_report_has_metrics_and_embedded_plots(lm_workspace: Path, sms_classifier, sms_data, tmp_path: Path):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    out = tmp_path / "out" / "report.html"
    report = evaluate("sms-clf", EvalConfig(data=sms_data, split="test", out=str(out)), ws, reg)
    m = report.metrics
    assert m["accuracy"] == pytest.approx(sms_classifier.lineage["metrics"]["test_accuracy"], abs=1e-9)
    assert 0.5 < m["roc_auc"] <= 1 and 0 <= m["ece"] <= 1
    page = out.read_text(encoding="utf-8")
    assert page == (Path(report.path) / "report.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    assert {img["alt"] for img in parser.images} == {"confusion matrix", "reliability diagram"}
    for img in parser.images:
        data = base64.b64decode(re.sub("^data:image/png;base64,", "", img["src"]))
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert f"{m['accuracy']:.4f}" in page
    saved = json.loads((Path(report.path) / "report.json").read_text())
    assert all(Path(p).exists() for p in saved["plots"].values())


def test_classifier_metric_selection_and_mismatches(lm_workspace: Path, sms_classifier, sms_data, chat_data):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    only = evaluate("sms-clf", EvalConfig(data=sms_data, metrics=["accuracy", "roc_auc"]), ws, reg)
    assert {"accuracy", "roc_auc"} <= set(only.metrics) and "macro_f1" not in only.metrics and "ece" not in only.metrics
    with pytest.raises(UserError, match="perplexity does not fit a classification model.*accuracy, precision"):
        evaluate("sms-clf", EvalConfig(data=sms_data, metrics=["perplexity"]), ws, reg)
    with pytest.raises(UserError, match="'chat' dataset; a classifier is evaluated on a classify dataset"):
        evaluate("sms-clf", EvalConfig(data=chat_data, split="val"), ws, reg)


def test_labels_spelled_otherwise_than_the_model_are_read_as_its_own():
    # prepare writes a class in its most used spelling: a dataset prepared again may say 'HAM' where the model says
    # 'ham' ('labels the model does not know' stopped the eval)
    from llmkit.eval.classification import in_model_spelling

    records = [{"text": "a", "label": "HAM"}, {"text": "b", "label": " Spam"}, {"text": "c", "label": "ham"},
               {"text": "d", "label": "eggs"}]
    out = in_model_spelling(records, ["ham", "spam"])
    assert [r["label"] for r in out] == ["ham", "spam", "ham", "eggs"] and out[0]["text"] == "a"
    assert records[0]["label"] == "HAM"  # the caller's records are not changed
    # two model labels one spelling apart: nothing is guessed
    assert [r["label"] for r in in_model_spelling(records[:1], ["ham", "Ham"])] == ["HAM"]
