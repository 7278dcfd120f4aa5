"""Read-only JSON for the web dashboard: what the registry holds, a run's loss curve (and, for a reward-tuned
run, its reward curves and before/after answers), a model's lineage, evaluations and compression table, and an
evaluation's HTML report.

The registry is `app.state.registry` and the workspace `app.state.workspace` (a Workspace or its root
folder). No answer carries an absolute path of the server's disk: paths inside the workspace are given
relative to it, others by their last part ("…/name"). Reports are served sandboxed (their own origin,
no scripts), so one cannot read what the UI keeps in its origin's storage (the API key). Handlers are plain `def`s: registry reads block, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import json
import math
import ntpath
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from llmkit.registry import Record, Registry
from llmkit.registry.run_state import run_state
from llmkit.serve.errors import ApiError

router = APIRouter(prefix="/api", tags=["dashboard"])

# The relation a compressed or exported model has to its source (see llmkit.optimize).
COMPRESSION_RELATIONS = ("quantized_from", "pruned_from", "exported_from")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".bin")
REPORT_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
# The per-step and per-evaluation figures a reward-tuned run logs (llmkit.train.grpo, llmkit.train.preference):
# curve -> metrics.jsonl key.
GRPO_CURVES = {"train": "reward", "val": "val_reward"}
PREFERENCE_CURVES = {"train": "rewards/margin", "val": "val_reward_margin", "accuracy_train": "rewards/accuracy",
                     "accuracy_val": "val_reward_accuracy"}
SQLITE_URL = "sqlite:///"  # then the database file's path: absolute when it has a fourth slash
SAMPLES_SHOWN = 10       # before/after rows: enough to read, few enough for a phone
SAMPLE_CHARS = 400       # a longer answer is cut: the table is for reading, not for the whole text


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
    state: str | None = None  # runs only: registry.run_state (None for a run recorded before runs kept one)


class Overview(BaseModel):
    datasets: list[RecordOut]
    runs: list[RecordOut]
    models: list[RecordOut]
    evals: list[RecordOut]


class Point(BaseModel):
    step: int
    value: float


class RewardCurves(BaseModel):
    """What a reward-tuned run logged. GRPO (metric "reward"): `train` the mean reward of each step's sampled
    answers, `val` the mean reward of greedy answers to the val prompts at each evaluation, step 0 being the one
    before training. DPO/ORPO/KTO (metric "margin"): the implicit reward of chosen minus rejected answers, per
    step and at evaluations; `accuracy_*` the share of pairs whose chosen answer out-rewards the rejected one
    (logged for pairs only: a KTO run has none)."""
    metric: str
    train: list[Point] = []
    val: list[Point] = []
    accuracy_train: list[Point] = []
    accuracy_val: list[Point] = []


class SamplePair(BaseModel):
    """One val prompt of a GRPO run: its greedy answer before training and at the latest evaluation (None when
    the run has not evaluated since)."""
    prompt: str
    before: str
    before_reward: float | None = None
    after: str | None = None
    after_reward: float | None = None


class RunMetrics(BaseModel):
    run: RecordOut
    train: list[Point]  # training loss by step
    val: list[Point]    # validation loss by step
    rewards: RewardCurves | None = None  # reward-tuned runs only
    samples: list[SamplePair] = []       # GRPO runs: before/after answers, at most SAMPLES_SHOWN
    samples_after_step: int | None = None  # the step of the evaluation the `after` answers come from, when known


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
    # Later rows win: a resumed run's redone steps replace the first try.
    series: dict[str, dict[int, float]] = {}
    folder = Path(run.path) if run.path else None
    metrics = _inside_workspace(request, folder / "metrics.jsonl") if folder else None
    for row in _jsonl(metrics):
        if isinstance(row.get("step"), int):
            for key, value in row.items():
                if _number(value):
                    series.setdefault(key, {})[row["step"]] = float(value)
    rewards = _reward_curves(run, series)
    samples = _inside_workspace(request, folder / "samples.jsonl") if folder and rewards and rewards.metric == "reward" else None
    pairs, evaluations = _before_after(samples)
    after_step = rewards.val[-1].step if rewards and rewards.val and evaluations == len(rewards.val) else None
    return RunMetrics(run=_out(request, run), train=_points(series.get("loss")), val=_points(series.get("val_loss")),
                      rewards=rewards, samples=pairs, samples_after_step=after_step if evaluations > 1 else None)


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
    state = run_state(record.metrics) if record.type == "run" else None
    return RecordOut(**_shown(record.to_json(), roots), size_bytes=size, state=state)


def _shown(value: Any, roots: set[Path]) -> Any:
    """`value` (a record's fields, params and metrics, nested) with every absolute path made relative to
    the workspace, or cut to "…/name" when outside it: the dashboard has no business with the disk's layout."""
    if isinstance(value, dict):
        return {k: _shown(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v, roots) for v in value]
    if isinstance(value, str) and value.startswith(SQLITE_URL):  # a study's storage: the registry's own file
        return SQLITE_URL + _shown(value.removeprefix(SQLITE_URL), roots)
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
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _jsonl(path: Path | None) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL file, line by line (a run's logs grow long); nothing when it is missing."""
    if path is None or not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run still writing its last line
                continue
            if isinstance(row, dict):
                yield row


def _points(by_step: dict[int, float] | None) -> list[Point]:
    return [Point(step=s, value=by_step[s]) for s in sorted(by_step or {})]


def _reward_curves(run: Record, series: dict[str, dict[int, float]]) -> RewardCurves | None:
    if GRPO_CURVES["train"] in series or GRPO_CURVES["val"] in series:
        val = dict(series.get(GRPO_CURVES["val"], {}))
        if _number(run.metrics.get("val_reward_before")):  # the evaluation before the first step, kept in the summary
            val.setdefault(0, float(run.metrics["val_reward_before"]))
        return RewardCurves(metric="reward", train=_points(series.get(GRPO_CURVES["train"])), val=_points(val))
    if PREFERENCE_CURVES["train"] in series or PREFERENCE_CURVES["val"] in series:
        return RewardCurves(metric="margin", **{curve: _points(series.get(key)) for curve, key in PREFERENCE_CURVES.items()})
    return None


def _before_after(samples: Path | None) -> tuple[list[SamplePair], int]:
    """The greedy val answers of a GRPO run's first evaluation (before training) beside those of its latest, and
    how many evaluations samples.jsonl holds. Each evaluation writes one block of val rows, the same prompts in
    the same order, and steps write train rows between them: a block ends at a train row, when it reaches the
    first block's length, or when a prompt comes again (two evaluations in a row)."""
    first: list[dict[str, Any]] | None = None
    last: list[dict[str, Any]] = []
    block: list[dict[str, Any]] = []
    evaluations = 0
    for row in _jsonl(samples):
        if row.get("kind") == "val" and isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str):
            full = first is not None and len(block) == len(first)
            if block and (full or any(r["prompt"] == row["prompt"] for r in block)):
                first, last, evaluations, block = first or block, block, evaluations + 1, []
            block.append(row)
        elif block:
            first, last, evaluations, block = first or block, block, evaluations + 1, []
    if block:
        first, last, evaluations = first or block, block, evaluations + 1
    if first is None:
        return [], 0
    latest = {r["prompt"]: r for r in reversed(last)} if evaluations > 1 else {}
    pairs = []
    for row in first[:SAMPLES_SHOWN]:
        after = latest.get(row["prompt"])
        pairs.append(SamplePair(prompt=_cut(row["prompt"]), before=_cut(row["answer"]), before_reward=_reward(row),
                                after=_cut(after["answer"]) if after else None, after_reward=_reward(after) if after else None))
    return pairs, evaluations


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _reward(row: dict[str, Any]) -> float | None:
    return float(row["reward"]) if _number(row.get("reward")) else None


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
