"""`llmkit predict`: a trained classifier's label and probabilities for texts."""

from __future__ import annotations

from typing import Any

import torch

from llmkit.config import PredictConfig
from llmkit.data.clean import clean_classifier_input
from llmkit.errors import UserError
from llmkit.models.io import resolve_model
from llmkit.models.kind import model_kind
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def predict(model_ref: str, texts: list[str], cfg: PredictConfig | None = None, registry=None) -> list[dict[str, Any]]:
    """One {text, label, score, probabilities} per text, in order."""
    cfg = PredictConfig.given(cfg, "llmkit.predict.predict", default=True)
    texts = [texts] if isinstance(texts, str) else list(texts)  # one text was classified character by character
    wrong = [t for t in texts if not isinstance(t, str)]
    if wrong:
        raise UserError(f"predict takes texts (a list of str), not {type(wrong[0]).__name__}")
    # the workspace's registry by default, as every stage opens it: a registered name resolves from Python too
    model = resolve_model(model_ref, registry or Registry.for_workspace(Workspace.open().root))
    lineage = model.lineage or {}
    if model_kind(model) == "causal":
        raise UserError(f"{model.ref} is a causal language model, not a classifier; use llmkit generate for language models")
    from llmkit.runtime.backends import load_classifier_on_runtime

    clf, tokenizer, labels = load_classifier_on_runtime(model)  # an ONNX export on onnxruntime
    max_length = cfg.max_length or lineage.get("max_length") or 512
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return classify_texts(clf.to(device), tokenizer, labels, texts, max_length, cfg.batch_size)


def classify_texts(clf, tokenizer, labels: list[str], texts: list[str], max_length: int,
                   batch_size: int = 32) -> list[dict[str, Any]]:
    """A loaded classifier's {text, label, score, probabilities} per text, in order."""
    device = next(clf.parameters()).device
    cleaned = [clean_classifier_input(t) for t in texts]
    # Longest first in batches of similar length: less padding; results go back in input order.
    order = sorted(range(len(texts)), key=lambda i: -len(cleaned[i]))
    results: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start: start + batch_size]
            enc = tokenizer([cleaned[i] for i in index], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = clf(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
            probs = logits.float().softmax(-1).cpu()
            for row, i in enumerate(index):
                p = probs[row].tolist()
                best = max(range(len(labels)), key=p.__getitem__)
                results[i] = {"text": texts[i], "label": labels[best], "score": p[best],
                              "probabilities": {label: p[k] for k, label in enumerate(labels)}}
    return [results[i] for i in range(len(texts))]
