"""Where an audit's result goes: the HTML file asked for with --out, and the registry. An audit of a
registered model is kept like an evaluation: a folder under evals/ (report.json, report.html) and an
`eval` record of kind bias-audit or privacy-audit, linked to the model by "audits" (not "evaluates", so
`llmkit compare` and the dashboard's evaluation list keep to quality evaluations) and to its dataset."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from llmkit.workspace import atomic_dir


def keep(report, html: str, kind: str, model, ws, registry, metrics: dict[str, float], dataset_ref: str | None = None) -> None:
    """Write report.out (when set) and, for a registered model, register the audit; sets report.id/path."""
    if report.out:
        out = Path(report.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    if ws is None or registry is None or not getattr(model, "id", None):
        return
    folder = ws.folder("evals", f"{model.name.replace('/', '_')}-{kind}-{uuid.uuid4().hex[:6]}")
    parents = [(model.id, "audits")]
    dataset = registry.find(dataset_ref, "dataset") if dataset_ref else None
    if dataset is not None:
        parents.append((dataset.id, "on_dataset"))
    with atomic_dir(folder) as tmp:
        (tmp / "report.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
        (tmp / "report.html").write_text(html, encoding="utf-8")
    params: dict[str, Any] = {"model": model.ref, "model_path": str(model.path), "dataset": dataset_ref}
    record = registry.add("eval", model.name, kind=kind, path=folder, params=params,
                          metrics={k: float(v) for k, v in metrics.items()}, parents=parents)
    report.id, report.path = record.id, str(folder)
