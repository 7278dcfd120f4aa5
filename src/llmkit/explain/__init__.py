"""`llmkit explain`: which input tokens a classifier's label or a language model's next token (or
completion) depends on, with a faithfulness check (deletion AOPC against random deletion).

    from llmkit.config import ExplainConfig
    from llmkit.explain import explain
    exp = explain("sms-clf", "WINNER!! Claim your free prize now", ExplainConfig(method="ig"), registry)
    exp.tokens, exp.scores, exp.aopc, exp.aopc_random
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmkit.config import ExplainConfig
from llmkit.errors import UserError
from llmkit.explain.attribution import (
    METHODS,
    OutOfTime,
    Subject,
    causal_subject,
    classifier_subject,
    normalize,
    run_method,
)
from llmkit.explain.faithfulness import deletion_aopc, verdict
from llmkit.explain.pieces import display_groups, merge_attention, merge_matrix, piece_bytes
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@dataclass
class Explanation:
    model: str
    kind: str                      # classifier | causal
    method: str
    text: str
    tokens: list[str]
    scores: list[float]            # raw attribution per token
    normalized: list[float]        # scores / max |score| over non-special tokens, in [-1, 1]
    special: list[bool]
    target: str
    quantity: str                  # probability | log_probability
    value: float                   # the target quantity on the input
    probability: float             # the target's probability (exp of a completion's log-probability)
    aopc: float
    aopc_random: float
    faithfulness: dict[str, Any]
    seconds: float                 # attribution only
    seconds_total: float           # attribution plus faithfulness
    warnings: list[str] = field(default_factory=list)
    convergence_delta: float | None = None   # IG: |sum of attributions - (f(x) - f(baseline))|
    baseline_value: float | None = None      # IG: f(baseline)
    steps: int | None = None
    span: int | None = None
    samples: int | None = None                # SHAP: coalitions evaluated
    labels: list[str] | None = None
    attentions: np.ndarray | None = field(default=None, repr=False)  # [layers, heads, n, n]
    rollout: np.ndarray | None = field(default=None, repr=False)     # [n, n]
    pieces: list[int] | None = None  # model tokens behind each shown token (byte pieces of one character join)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "model", "kind", "method", "text", "tokens", "scores", "normalized", "special", "target", "quantity", "value",
            "probability", "aopc", "aopc_random", "faithfulness", "seconds", "seconds_total", "warnings", "pieces")}
        if self.method == "ig":
            out.update(convergence_delta=self.convergence_delta, baseline_value=self.baseline_value, steps=self.steps)
        if self.method == "occlusion":
            out["span"] = self.span
        if self.method == "shap":
            out["samples"] = self.samples
        if self.labels:
            out["labels"] = self.labels
        if self.attentions is not None:
            layers, heads = self.attentions.shape[:2]
            n = len(self.tokens)
            out["attention"] = {"layers": int(layers), "heads": int(heads),
                                "rollout": [[round(float(v), 5) for v in row[:n]] for row in self.rollout[:n]]}
        return out


def explain_loaded(model, tokenizer, kind: str, text: str, cfg: ExplainConfig, *, labels: list[str] | None = None,
                   max_length: int = 512, name: str = "model", deadline: float | None = None,
                   batch_tokens: int = 0) -> Explanation:
    """Explain with a model already in memory (what `explain`, the server and the benchmark call).

    `deadline` (a time.perf_counter() value): the work stops between two forward passes once it is
    past, raising OutOfTime. `batch_tokens`: token positions per forward pass (IG steps, occlusion
    windows, SHAP coalitions and faithfulness rows are chunked to fit), which bounds peak memory."""
    if not text:
        raise UserError("nothing to explain: TEXT is empty")
    if kind == "classifier":
        if cfg.completion is not None:
            raise UserError("--completion is for causal language models; a classifier explains a --target label",
                            param="explain.completion")
        subject: Subject = classifier_subject(model, tokenizer, labels or [], text, cfg.target, max_length)
    elif kind == "causal":
        subject = causal_subject(model, tokenizer, text, cfg.target, cfg.completion)
    else:
        raise UserError(f"{name} is an encoder without a task head; explain works on classifiers and causal language models")
    if not subject.free:  # " " for a classifier is [CLS] [SEP]: scores of nothing, and a faithfulness line about 0 tokens
        raise UserError(f"nothing to explain: TEXT {text[:40]!r} gives {name} only special tokens "
                        f"({' '.join(subject.tokens())}); give text with words in it")
    subject.deadline, subject.batch_tokens = deadline, batch_tokens
    started = time.perf_counter()
    result, seconds = run_method(subject, cfg.method, cfg.steps, cfg.span, cfg.internal_batch_size, cfg.samples)
    scores = np.asarray(result["scores"], dtype=np.float32)
    faith = deletion_aopc(subject, scores, cfg.aopc_k, cfg.aopc_seeds)
    value = result.get("f_input")
    if value is None:
        value = float(subject.score(subject.ids[None])[0])
    probability = float(np.exp(value)) if subject.quantity == "log_probability" else float(value)
    faith["verdict"] = verdict(faith, subject.quantity, float(value))
    shown = _shown_tokens(subject, scores, result.get("attentions"), result.get("rollout"))
    tokens, scores, special, pieces, attentions, rollout = shown
    return Explanation(
        model=name, kind=kind, method=cfg.method, text=text, tokens=tokens,
        scores=[float(s) for s in scores], normalized=[float(s) for s in normalize(scores, special)],
        special=special, pieces=pieces, target=subject.target, quantity=subject.quantity, value=float(value),
        probability=probability, aopc=faith["aopc"], aopc_random=faith["aopc_random"], faithfulness=faith,
        seconds=round(seconds, 4), seconds_total=round(time.perf_counter() - started, 4), warnings=subject.warnings,
        convergence_delta=result.get("convergence_delta"), baseline_value=result.get("f_baseline"),
        steps=result.get("steps"), span=result.get("span"), samples=result.get("samples"), labels=subject.labels,
        attentions=attentions, rollout=rollout)


def _shown_tokens(subject: Subject, scores: np.ndarray, attentions, rollout):
    """The model's tokens as shown: byte pieces of one character joined (see pieces.py), scores summed."""
    ids = [int(t) for t in subject.ids[: subject.n_shown]]
    groups = display_groups(piece_bytes(subject.tokenizer, ids), subject.special)
    names = subject.tokens()
    tokens = [names[start] if text is None else text for start, _, text in groups]
    pieces = [end - start for start, end, _ in groups]
    special = [subject.special[start] for start, _, _ in groups]
    if len(groups) == len(ids):  # nothing joined
        return tokens, scores, special, pieces, attentions, rollout
    merged = np.array([scores[start:end].sum() for start, end, _ in groups], dtype=np.float32)
    if attentions is not None:
        membership = merge_matrix(groups, attentions.shape[-1])
        attentions = merge_attention(attentions, membership).astype(np.float32)
        rollout = merge_attention(rollout, membership)
    return tokens, merged, special, pieces, attentions, rollout


def load_for_explain(model_ref: str, registry=None):
    """(model, tokenizer, kind, labels, max_length, ref) of a registered model or folder."""
    from llmkit.models.io import load_causal_lm, load_classifier, resolve_model
    from llmkit.models.kind import model_kind

    model = resolve_model(model_ref, registry)
    kind = model_kind(model)
    if kind == "classifier":
        clf, tokenizer, labels = load_classifier(model)
        lineage = model.lineage or {}
        max_length = lineage.get("max_length") or min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                                                      int(getattr(clf.config, "max_position_embeddings", 512)))
        return clf, tokenizer, kind, labels, int(max_length), model.ref
    if kind == "causal":
        lm, tokenizer = load_causal_lm(model)
        return lm, tokenizer, kind, None, 0, model.ref
    raise UserError(f"{model.ref} is an encoder without a task head; explain works on classifiers "
                    "(llmkit train classify) and causal language models")


def explain(model_ref: str, text: str, cfg: ExplainConfig | None = None, registry=None) -> Explanation:
    """Explain one text: token attributions by cfg.method, plus deletion AOPC against random deletion."""
    cfg = ExplainConfig.given(cfg, "llmkit.explain.explain", default=True)
    if text is not None and not isinstance(text, str):
        raise UserError(f"explain takes one text (a str), not {type(text).__name__}: explain each text in turn")
    registry = registry or Registry.for_workspace(Workspace.open().root)  # as every stage opens it
    model, tokenizer, kind, labels, max_length, ref = load_for_explain(model_ref, registry)
    return explain_loaded(model, tokenizer, kind, text, cfg, labels=labels,
                          max_length=cfg.max_length or max_length, name=ref)


__all__ = ["METHODS", "ExplainConfig", "Explanation", "OutOfTime", "explain", "explain_loaded", "load_for_explain"]
