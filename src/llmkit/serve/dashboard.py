"""Read-only JSON for the web dashboard: what the registry holds, a run's loss curve, a model's lineage,
evaluations and compression table, and an evaluation's HTML report.

The registry is `app.state.registry` and the workspace `app.state.workspace` (a Workspace or its root
folder). No answer carries an absolute path of the server's disk: paths inside the workspace are given
relative to it, others by their last part ("…/name"). Reports are served sandboxed (their own origin,
no scripts), so one cannot read what the UI keeps in its origin's storage (the API key). Handlers are plain `def`s: registry reads block, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import json
import ntpath
import posixpath
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from llmkit.registry import Record, Registry
from llmkit.serve.errors import ApiError

router = APIRouter(prefix="/api", tags=["dashboard"])

# The relation a compressed or exported model has to its source (see llmkit.optimize).
COMPRESSION_RELATIONS = ("quantized_from", "pruned_from", "exported_from")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".bin")
REPORT_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


class RecordOut(BaseModel):
    id: str
    type: str
    name: str
    version: int
    kind: str
    created_at: float
    created: str
    ref: str
    path: str | None = None
    content_hash: str | None = None
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    size_bytes: int | None = None  # models only: weight files on disk


class Overview(BaseModel):
    datasets: list[RecordOut]
    runs: list[RecordOut]
    models: list[RecordOut]
    evals: list[RecordOut]


class Point(BaseModel):
    step: int
    value: float


class RunMetrics(BaseModel):
    run: RecordOut
    train: list[Point]  # training loss by step
    val: list[Point]    # validation loss by step


class Link(BaseModel):
    relation: str
    record: RecordOut


class CompressionRow(BaseModel):
    model: str
    stage: str  # before | after
    size_mb: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None
    decode_tokens_per_s: float | None = None


class CompressionTable(BaseModel):
    relation: str
    rows: list[CompressionRow]


class ModelDetail(BaseModel):
    record: RecordOut
    parents: list[Link]
    children: list[Link]
    evals: list[RecordOut]  # newest first
    audits: list[RecordOut] = []  # bias and privacy audits, newest first
    compression: list[CompressionTable]


# -- endpoints ----------------------------------------------------------------------------------------


@router.get("/overview", response_model=Overview)
def overview(request: Request) -> Overview:
    registry = _registry(request)
    records = list(reversed(registry.list()))  # newest first
    grouped = {kind: [_out(request, r) for r in records if r.type == kind] for kind in ("dataset", "run", "model", "eval")}
    return Overview(datasets=grouped["dataset"], runs=grouped["run"], models=grouped["model"], evals=grouped["eval"])


@router.get("/runs/{ref:path}/metrics", response_model=RunMetrics)
def run_metrics(ref: str, request: Request) -> RunMetrics:
    run = _find(request, ref, "run")
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    metrics = _inside_workspace(request, Path(run.path) / "metrics.jsonl") if run.path else None
    if metrics is not None and metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run still writing its last line
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
            # Later rows win: a resumed run's redone steps replace the first try.
            if _number(row.get("loss")):
                train[row["step"]] = float(row["loss"])
            if _number(row.get("val_loss")):
                val[row["step"]] = float(row["val_loss"])
    return RunMetrics(run=_out(request, run), train=[Point(step=s, value=train[s]) for s in sorted(train)],
                      val=[Point(step=s, value=val[s]) for s in sorted(val)])


@router.get("/models/{ref:path}", response_model=ModelDetail)
def model_detail(ref: str, request: Request) -> ModelDetail:
    registry = _registry(request)
    model = _find(request, ref, "model")
    parents = registry.parents(model.id)
    children = registry.children(model.id)
    evals = sorted((r for rel, r in children if rel == "evaluates" and r.type == "eval"), key=lambda r: -r.created_at)
    audits = sorted((r for rel, r in children if rel == "audits" and r.type == "eval"), key=lambda r: -r.created_at)
    tables = [_compression(registry, parent, model, rel) for rel, parent in parents if rel in COMPRESSION_RELATIONS]
    tables += [_compression(registry, model, child, rel) for rel, child in children if rel in COMPRESSION_RELATIONS]
    return ModelDetail(
        record=_out(request, model),
        parents=[Link(relation=rel, record=_out(request, r)) for rel, r in parents],
        children=[Link(relation=rel, record=_out(request, r)) for rel, r in children if rel not in ("evaluates", "audits")],
        evals=[_out(request, r) for r in evals],
        audits=[_out(request, r) for r in audits],
        compression=[t for t in tables if t is not None],
    )


@router.get("/evals/{ref:path}/report", response_class=FileResponse)
def eval_report(ref: str, request: Request) -> FileResponse:
    record = _find(request, ref, "eval")
    report = _inside_workspace(request, Path(record.path) / "report.html") if record.path else None
    if report is None or not report.is_file():
        raise ApiError(404, f"evaluation {record.ref} has no report.html inside the workspace", type="not_found_error",
                       param="ref", code="not_found")
    # sandbox (no allow-same-origin, no allow-scripts): the page gets an opaque origin of its own, so
    # nothing in it can read the UI's localStorage, where the API key is kept.
    return FileResponse(report, media_type="text/html", headers=REPORT_HEADERS)


# -- helpers ------------------------------------------------------------------------------------------


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _find(request: Request, ref: str, type: str) -> Record:
    record = _registry(request).find(ref, type)
    if record is None:
        raise ApiError(404, f"no {type} named '{ref}' in the registry", type="not_found_error", param="ref",
                       code="not_found")
    return record


def _root(request: Request) -> Path:
    workspace = request.app.state.workspace
    return Path(getattr(workspace, "root", workspace))


def _inside_workspace(request: Request, path: Path) -> Path | None:
    """`path` resolved, or None when it (or a symlink on the way) leads outside the workspace."""
    root = _root(request).resolve()
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) else None


def _out(request: Request, record: Record) -> RecordOut:
    size = _weights_size(Path(record.path)) if record.type == "model" and record.path else None
    roots = {_root(request).absolute(), _root(request).resolve()}
    return RecordOut(**_shown(record.to_json(), roots), size_bytes=size)


def _shown(value: Any, roots: set[Path]) -> Any:
    """`value` (a record's fields, params and metrics, nested) with every absolute path made relative to
    the workspace, or cut to "…/name" when outside it: the dashboard has no business with the disk's layout."""
    if isinstance(value, dict):
        return {k: _shown(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v, roots) for v in value]
    if not isinstance(value, str) or not (posixpath.isabs(value) or ntpath.isabs(value)) or "\n" in value:
        return value
    path = Path(value)
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix() or "."
    return "…/" + (ntpath.basename(value.rstrip("/\\")) or "")


def _weights_size(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compression(registry: Registry, before: Record, after: Record, relation: str) -> CompressionTable | None:
    """The before/after table, rebuilt from the evaluations `llmkit.optimize.table` registered for both
    models (the optimize commands print it but do not store it). None when the result was never measured."""
    rows = [_compression_row(registry, record, stage) for stage, record in (("before", before), ("after", after))]
    if all(getattr(rows[1], key) is None for key in ("perplexity", "accuracy", "decode_tokens_per_s")):
        return None
    return CompressionTable(relation=relation, rows=rows)


def _compression_row(registry: Registry, model: Record, stage: str) -> CompressionRow:
    evals = sorted((r for rel, r in registry.children(model.id) if rel == "evaluates"), key=lambda r: -r.created_at)
    quality = next((e for e in evals if e.kind in ("causal-lm", "classification") and e.params.get("split") == "val"), None)
    speed = next((e for e in evals if e.kind == "speed"), None)
    size = (speed.metrics.get("size_mb") if speed else None)
    if size is None and model.path:
        weights = _weights_size(Path(model.path))
        size = round(weights / 2**20, 3) if weights is not None else None
    q = quality.metrics if quality else {}
    return CompressionRow(model=model.ref, stage=stage, size_mb=size, perplexity=q.get("perplexity"),
                          accuracy=q.get("accuracy"),
                          decode_tokens_per_s=speed.metrics.get("decode_tokens_per_s") if speed else None)
