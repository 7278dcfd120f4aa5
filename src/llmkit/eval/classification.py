"""Classifier metrics (scikit-learn) and their plots: confusion matrix and reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def in_model_spelling(records: list[dict], labels: list[str]) -> list[dict]:
    """`records` with each label written as the model writes it when they differ only in case or spacing ('HAM' for
    'ham'): data prepare reads such spellings as one class, written as the most used one, so a dataset prepared
    again (or another's) may spell a class otherwise than the model trained on it. Labels with no such match stay as
    they are, for the caller's "labels the model does not know"."""
    def key(label: str) -> str:
        return " ".join(str(label).split()).casefold()

    folded: dict[str, list[str]] = {}
    for label in labels:
        folded.setdefault(key(label), []).append(label)
    known = set(labels)
    out = []
    for r in records:
        match = folded.get(key(r["label"]), [])
        out.append({**r, "label": match[0]} if r["label"] not in known and len(match) == 1 else r)
    return out


def classification_metrics(golds: list[int], probs: np.ndarray, labels: list[str], bins: int = 15) -> dict[str, float]:
    """Accuracy; per-class precision/recall/F1; macro and micro averages; ROC-AUC; expected calibration error."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(golds)
    preds = probs.argmax(1)
    idx = list(range(len(labels)))
    out: dict[str, float] = {"accuracy": float(accuracy_score(y, preds)), "examples": int(len(y))}
    p, r, f, support = precision_recall_fscore_support(y, preds, labels=idx, zero_division=0)
    for i, label in enumerate(labels):
        out[f"precision_{label}"], out[f"recall_{label}"], out[f"f1_{label}"] = float(p[i]), float(r[i]), float(f[i])
        out[f"support_{label}"] = int(support[i])
    for avg in ("macro", "micro"):
        ap, ar, af, _ = precision_recall_fscore_support(y, preds, labels=idx, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(ap), float(ar), float(af)
    present = sorted(set(y.tolist()))
    if len(present) == len(labels) and len(labels) >= 2:  # AUC needs every class among the golds
        if len(labels) == 2:
            out["roc_auc"] = float(roc_auc_score(y, probs[:, 1]))
        else:
            out["roc_auc"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=idx))
    out["ece"] = expected_calibration_error(y, probs, bins)
    return out


def reliability(golds: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each equal-width confidence bin (empty bins left out)."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == golds
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        if inside.any():
            rows.append((float(confidence[inside].mean()), float(correct[inside].mean()), int(inside.sum())))
    return rows


def expected_calibration_error(golds: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of examples."""
    n = len(golds)
    return float(sum(count / n * abs(acc - conf) for conf, acc, count in reliability(golds, probs, bins))) if n else 0.0


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(golds, preds, labels: list[str], out: Path, title: str) -> Path:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(golds, preds, labels=list(range(len(labels))))
    size = max(4.0, 0.6 * len(labels) + 2)
    fig = _figure((size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() or 1
    for r in range(len(labels)):
        for c in range(len(labels)):
            ax.text(c, r, str(matrix[r, c]), ha="center", va="center", color="white" if matrix[r, c] > top / 2 else "black")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_reliability(golds: np.ndarray, probs: np.ndarray, out: Path, title: str, bins: int = 15) -> Path:
    rows = reliability(golds, probs, bins)
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if rows:
        conf, acc, count = zip(*rows, strict=True)
        ax.bar(conf, acc, width=1.0 / bins, alpha=0.6, edgecolor="black", label="accuracy per confidence bin")
        for c, a, n in rows:
            ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {expected_calibration_error(golds, probs, bins):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
