"""Classification: minilm-l6 on an SMS Spam sample, a LoRA decoder classifier, labels, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmkit.config import ClassifyConfig, LoraConfig
from llmkit.errors import UserError
from llmkit.predict import predict
from llmkit.registry import Registry
from llmkit.train.classification import check_labels, class_weights, classify
from llmkit.train.lora import merge
from llmkit.workspace import Workspace


def test_minilm_classifier_on_sms_spam_reaches_a_sane_accuracy(sms_classifier, lm_workspace: Path):
    m = sms_classifier.lineage["metrics"]
    # The sample is 86% ham: a classifier that learned nothing scores 0.86 accuracy and macro-F1 ~0.46.
    assert m["test_accuracy"] >= 0.93 and m["test_macro_f1"] >= 0.85, m
    assert m["test_recall_spam"] >= 0.7
    assert m["trainable_parameters"] == m["total_parameters"] > 20_000_000
    config = json.loads((sms_classifier.path / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["ham", "spam"]
    run = Path(sms_classifier.lineage["run"]["path"])
    assert (run / "plots" / "confusion.png").stat().st_size > 1000 and (run / "plots" / "loss.png").exists()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
    assert len(evals) == m["epochs"] == 1  # one per epoch: the fixture trains one


def test_predict_labels_texts_with_probabilities(sms_classifier, lm_workspace: Path):
    reg = Registry.for_workspace(lm_workspace)
    texts = ["URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010",
             "Ok lar... I'll see you at home later"]
    out = predict("sms-clf", texts, registry=reg)
    assert [r["text"] for r in out] == texts
    assert [r["label"] for r in out] == ["spam", "ham"]
    for r in out:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == max(r["probabilities"].values())


def test_predict_cleans_texts_as_prepare_cleaned_the_training_texts(sms_classifier, lm_workspace: Path):
    """Full-width letters from an IME and line breaks reach the classifier as prepare made its training texts
    (full-width ＦＲＥＥ read as unknown tokens scored differently from FREE)."""
    reg = Registry.for_workspace(lm_workspace)
    typed = ["ＦＲＥＥ entry to WIN ｃａｓｈ　ｎｏｗ! Txt\n\n  CLAIM to 81010", "Ｏｋ lar... see you\r\nat home"]
    plain = ["FREE entry to WIN cash now! Txt CLAIM to 81010", "Ok lar... see you at home"]
    out, expected = predict("sms-clf", typed, registry=reg), predict("sms-clf", plain, registry=reg)
    assert [r["text"] for r in out] == typed  # the user's own text comes back
    for got, want in zip(out, expected, strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_lora_decoder_classifier_trains_the_head_and_adapters_and_merges(lm_workspace: Path, tiny_model, sms_data):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    cfg = ClassifyConfig(base="tiny-lm", data=sms_data, name="tiny-clf", method="lora", max_steps=15, batch_size=16, lr=5e-3,
                         max_length=64, lora=LoraConfig(r=4, alpha=8), seed=2)
    model = classify(cfg, ws, reg)
    assert (model.path / "adapter_config.json").exists()
    m = model.lineage["metrics"]
    assert 0 < m["trainable_parameters"] < m["total_parameters"]
    assert dict(reg.parents(model.id))["base_model"].id == tiny_model.id
    texts = ["Free entry to win cash now", "see you soon"]
    via_adapter = predict("tiny-clf", texts, registry=reg)
    merged = merge("tiny-clf", ws, reg)
    via_merged = predict(merged.name, texts, registry=reg)
    for a, b in zip(via_adapter, via_merged, strict=True):
        assert a["label"] == b["label"]
        for label in a["probabilities"]:
            assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=1e-5)


def test_labels_unseen_in_train_are_an_error_listing_both_sets():
    splits = {"train": [{"text": "a", "label": "ham"}, {"text": "b", "label": "spam"}],
              "val": [{"text": "c", "label": "eggs"}], "test": []}
    with pytest.raises(UserError, match=r"val labels \['eggs'\] never occur in train; train labels: \['ham', 'spam'\]"):
        check_labels(splits, "d:v1")
    with pytest.raises(UserError, match="at least 2"):
        check_labels({"train": [{"text": "a", "label": "x"}], "val": [], "test": []}, "d:v1")


def test_auto_class_weights_are_inverse_frequency():
    weights = class_weights([0, 0, 0, 1], 2, "auto")
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    assert class_weights([0, 1], 2, "none") is None


def test_predict_refuses_a_language_model(tiny_model, lm_workspace: Path):
    with pytest.raises(UserError, match="not a classifier"):
        predict("tiny-lm", ["hello"], registry=Registry.for_workspace(lm_workspace))


def test_text_the_base_tokenizer_cannot_read_is_measured_with_the_spans_it_loses():
    """minilm-l6 reads about three Chinese characters in four as [UNK]: a Chinese classifier trained on it without a
    word (its explanations then showed [UNK] where the text was)."""
    from llmkit.models.io import load_tokenizer_for, resolve_model
    from llmkit.train.classification import unknown_share

    tok = load_tokenizer_for(resolve_model("minilm-l6"))
    share, spans = unknown_share(tok, ["关关雎鸠，在河之洲。窈窕淑女，君子好逑。"] * 3)
    assert share > 0.3 and "在" in spans and all(len(s) == 1 for s in spans)
    assert unknown_share(tok, ["free entry in a weekly competition, text WIN now"]) == (0.0, [])
