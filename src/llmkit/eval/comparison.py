"""`llmkit compare`: models side by side from their registered evaluations (evaluating what is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.config import EvalConfig
from llmkit.errors import UserError
from llmkit.eval.report import format_number
from llmkit.models.io import Model, resolve_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace

# The figures worth a row, in this order, when present.
HEADLINE = ["perplexity", "bits_per_byte", "loss", "accuracy", "macro_f1", "micro_f1", "roc_auc", "ece", "exact_match",
            "rougeL", "bleu", "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms_p50", "latency_ms_p50",
            "latency_ms_p95", "texts_per_s", "peak_rss_mb", "size_mb"]


def _default(rec) -> bool:
    """Evaluated with the default settings, so its figures line up with a fresh default evaluation."""
    cfg = rec.params.get("config") or {}
    return not (cfg.get("context") or cfg.get("stride") or cfg.get("max_examples") or cfg.get("metrics")) and cfg.get("source", "text") == "text"


def latest_evals(registry: Registry, model_id: str) -> list:
    evals = [rec for relation, rec in registry.children(model_id) if rec.type == "eval" and relation == "evaluates"]
    return sorted(evals, key=lambda r: r.created_at)


def compare(model_refs: list[str], data: str | None = None, split: str = "test", ws: Workspace | None = None,
            registry: Registry | None = None, progress=None) -> dict[str, Any]:
    """{"models": [...], "rows": {metric: [value per model]}, "evals": [[eval ids per model]], "sources": [what each
    model's quality figures were measured on], "warnings": [...]}.

    For each model: its latest evaluation on `data` (when given; else its latest with the default settings, or its
    latest at all, said so) and its latest speed measurement. A model without an evaluation on `data` is evaluated now.
    """
    from llmkit.eval.evaluation import evaluate

    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    if isinstance(model_refs, str | Path | Model):  # one model: "nb-lm" was compared as the models 'n', 'b', ...
        model_refs = [model_refs]
    if len(model_refs) < 1:
        raise UserError("compare needs at least one MODEL")
    ds = registry.get(data, "dataset") if data else None
    columns, used, sources = [], [], []
    for ref in model_refs:
        model = resolve_model(ref, registry)
        if model.id is None:  # a built-in or a folder: no evaluations are linked to it, so it is evaluated now
            if ds is None:
                raise UserError(f"{ref} is not registered, so it has no evaluations to line up; pass --data NAME to "
                                "evaluate it now, or register it (llmkit import SOURCE --name NAME)")
            report = evaluate(ref, EvalConfig(data=ds.id, split=split), ws, registry, progress)
            columns.append((model.ref, dict(report.metrics)))
            used.append([report.id])
            sources.append(f"{ds.ref} ({split})")
            continue
        evals = latest_evals(registry, model.id)
        chosen = []
        if ds is not None:
            on_data = [e for e in evals if e.params.get("dataset_id") == ds.id and e.params.get("split") == split and _default(e)]
            if not on_data:
                evaluate(model.id, EvalConfig(data=ds.id, split=split), ws, registry, progress)
                on_data = [e for e in latest_evals(registry, model.id) if e.params.get("dataset_id") == ds.id]
            chosen.append(on_data[-1])
        else:
            quality = [e for e in evals if e.kind != "speed"]
            default = [e for e in quality if _default(e)]
            if quality:
                chosen.append((default or quality)[-1])
        speed = [e for e in evals if e.kind == "speed"]
        if speed:
            chosen.append(speed[-1])
        if not chosen:
            raise UserError(f"{model.ref} has no evaluation yet; pass --data NAME to evaluate it now, or run llmkit eval / bench-model")
        merged: dict[str, Any] = {}
        for rec in chosen:
            merged.update(rec.metrics)
        columns.append((model.ref, merged))
        used.append([rec.id for rec in chosen])
        sources.append(next((_source(rec) for rec in chosen if rec.kind != "speed"), None))
    keys = [k for k in HEADLINE if any(k in m for _, m in columns)]
    warnings = []
    if len({s for s in sources if s}) > 1:  # a perplexity on Python code beside one on poems: said, not lined up
        warnings.append("the models' figures come from different data or settings (row 'evaluated on'); pass --data "
                        "NAME to score them all on one dataset")
    return {"models": [name for name, _ in columns], "rows": {k: [m.get(k) for _, m in columns] for k in keys},
            "evals": used, "dataset": ds.ref if ds else None, "sources": sources, "warnings": warnings}


def _source(rec) -> str:
    """What an evaluation's figures were measured on, for the table: 'shakespeare:v1 (test)', a file, or settings."""
    params = rec.params or {}
    where = str(params.get("dataset") or "?") + (f" ({params['split']})" if params.get("split") else "")
    return where if _default(rec) else f"{where}, not the default settings"


def compare_table(result: dict[str, Any]):
    from rich.table import Table

    table = Table(title="compare" + (f" on {result['dataset']}" if result["dataset"] else ""))
    table.add_column("metric")
    for name in result["models"]:
        table.add_column(name, justify="right")
    if any(result.get("sources") or []):
        from rich.text import Text

        table.add_row("evaluated on", *(Text(s or "-") for s in result["sources"]))
    for key, values in result["rows"].items():
        table.add_row(key, *(format_number(v, key) for v in values))
    if result.get("warnings"):
        table.caption = "warning: " + "; ".join(result["warnings"])
    return table
