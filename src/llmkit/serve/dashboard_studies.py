"""Read-only JSON for the dashboard's hyper-parameter studies (`llmkit tune`): the list of studies, one study's
settings, trial states, best trials and report plots, and the plots themselves.

A study is a registry `run` of kind `study` (llmkit.tune.study): its params hold what was asked (stage, data,
metric, direction, trials, space), its metrics what came out once it finished (states, best, best_trials,
reports). Its trials are runs linked to it (`trial_of`) whose metrics carry `tune_state`: while a study is
still running, its state counts are read from them, so the dashboard follows it live. The rules of
dashboard.py hold here too: no absolute path of the server's disk in an answer, files only from inside the
workspace, plain `def` handlers (registry reads block).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from llmkit.registry import Record
from llmkit.serve.dashboard import RecordOut, _inside_workspace, _number, _out, _registry, _root, _shown
from llmkit.serve.errors import ApiError

router = APIRouter(prefix="/api", tags=["dashboard"])

# The PNGs llmkit.tune.reports writes into a study folder, in the order they are best read; nothing else
# of the folder (space.yaml, plan.json, worker logs) is served.
PLOTS = ("history", "parallel", "importances")
PLOT_HEADERS = {"X-Content-Type-Options": "nosniff"}
# A trial run's tune_state (llmkit.tune.trials) -> the study's state count it adds to.
TRIAL_STATES = {"complete": "complete", "pruned": "pruned", "failed": "fail", "running": "running"}
NOT_PARAMS = ("trial", "run", "seconds")  # the columns of a best_trials row that are not drawn values


class StudyStates(BaseModel):
    """How many trials ended each way (`stopped_by_budget` counts the pruned ones the time budget stopped)."""
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    stopped_by_budget: int = 0


class BestTrial(BaseModel):
    trial: int
    value: float | None = None
    params: dict[str, Any] = {}
    run: str | None = None    # the trial run's ref
    model: str | None = None  # the kept model's ref, while it is in the registry


class TrialRow(BaseModel):
    trial: int
    value: float | None = None
    params: dict[str, Any] = {}
    run: str | None = None  # ref
    seconds: float | None = None


class Plot(BaseModel):
    name: str  # history | parallel | importances
    url: str


class StudySummary(BaseModel):
    id: str
    ref: str
    created: str
    stage: str | None = None
    data: str | None = None
    metric: str | None = None
    direction: str | None = None  # min | max
    planned: int | None = None    # --trials
    finished: bool                # the study wrote its outcome (a study still running has not)
    states: StudyStates
    best: BestTrial | None = None


class StudyList(BaseModel):
    studies: list[StudySummary]  # newest first


class StudyDetail(StudySummary):
    record: RecordOut
    space: Any = None         # the search space as written
    params: list[str] = []    # the searched parameters, the rows' columns
    rows: list[TrialRow] = []  # the best completed trials, best first
    plots: list[Plot] = []


@router.get("/studies", response_model=StudyList)
def studies(request: Request) -> StudyList:
    found = [r for r in reversed(_registry(request).list("run")) if r.kind == "study"]
    return StudyList(studies=[_summary(request, r, _trial_runs(request, r)) for r in found])


# Declared before the study itself: `{ref:path}` would take ".../plots/NAME" as a ref.
@router.get("/studies/{ref:path}/plots/{name}", response_class=FileResponse)
def study_plot(ref: str, name: str, request: Request) -> FileResponse:
    study = _study(request, ref)
    stem = name.removesuffix(".png")
    path = _plot_file(request, study, stem) if name.endswith(".png") and stem in PLOTS else None
    if path is None:
        raise ApiError(404, f"study {study.ref} has no plot '{name}'; a study's plots are "
                       + ", ".join(f"{p}.png" for p in PLOTS) + " once it has finished", type="not_found_error",
                       param="name", code="not_found")
    return FileResponse(path, media_type="image/png", headers=PLOT_HEADERS)


@router.get("/studies/{ref:path}", response_model=StudyDetail)
def study_detail(ref: str, request: Request) -> StudyDetail:
    study = _study(request, ref)
    trials = _trial_runs(request, study)
    refs = {r.id: r.ref for r in trials}
    metric = study.metrics.get("metric") or study.params.get("metric")
    rows = [_row(row, metric, refs) for row in study.metrics.get("best_trials") or [] if isinstance(row, dict)]
    names: list[str] = []
    for row in rows:
        names += [k for k in row.params if k not in names]
    plots = []
    for stem in PLOTS:
        if (path := _plot_file(request, study, stem)) is not None:
            # The file's time in the URL: a study joined again rewrites its plots, and the browser must not
            # keep the old picture.
            plots.append(Plot(name=stem, url=f"/api/studies/{study.id}/plots/{stem}.png?v={int(path.stat().st_mtime)}"))
    roots = {_root(request).absolute(), _root(request).resolve()}
    return StudyDetail(**_summary(request, study, trials).model_dump(), record=_out(request, study),
                       space=_shown(study.params.get("space"), roots), params=names, rows=rows, plots=plots)


# -- helpers ------------------------------------------------------------------------------------------


def _study(request: Request, ref: str) -> Record:
    record = _registry(request).find(ref, "run")
    if record is None or record.kind != "study":
        raise ApiError(404, f"no study named '{ref}' in the registry (llmkit ls runs lists them, kind study)",
                       type="not_found_error", param="ref", code="not_found")
    return record


def _trial_runs(request: Request, study: Record) -> list[Record]:
    return [r for rel, r in _registry(request).children(study.id) if rel == "trial_of" and r.type == "run"]


def _summary(request: Request, study: Record, trials: list[Record]) -> StudySummary:
    finished = isinstance(study.metrics.get("states"), dict)
    if finished:
        counted = {k: v for k, v in study.metrics["states"].items() if k in StudyStates.model_fields and isinstance(v, int)}
        states = StudyStates(**counted)
    else:  # still running (or killed): what its trial runs say so far
        states = StudyStates()
        for run in trials:
            key = TRIAL_STATES.get(run.metrics.get("tune_state"))
            if key:
                setattr(states, key, getattr(states, key) + 1)
    return StudySummary(id=study.id, ref=study.ref, created=study.created, stage=study.params.get("stage"),
                        data=study.params.get("data"), metric=study.metrics.get("metric") or study.params.get("metric"),
                        direction=study.metrics.get("direction") or study.params.get("direction"),
                        planned=study.params.get("trials"), finished=finished, states=states,
                        best=_best(request, study, trials))


def _best(request: Request, study: Record, trials: list[Record]) -> BestTrial | None:
    best = study.metrics.get("best")
    if isinstance(best, dict) and isinstance(best.get("number"), int):
        run = next((r.ref for r in trials if r.id == best.get("run_id")), None)
        model = _registry(request).find(best["model_id"], "model") if best.get("model_id") else None
        return BestTrial(trial=best["number"], value=best.get("value") if _number(best.get("value")) else None,
                         params=best.get("params") or {}, run=run, model=model.ref if model else None)
    # Still running: the best completed trial so far, from the values its runs carry.
    done = [r for r in trials if r.metrics.get("tune_state") == "complete" and _number(r.metrics.get("tune_value"))]
    if not done:
        return None
    maximize = (study.params.get("direction") or "min") == "max"
    top = (max if maximize else min)(done, key=lambda r: r.metrics["tune_value"])
    return BestTrial(trial=top.metrics.get("tune_trial", -1), value=top.metrics["tune_value"],
                     params=top.metrics.get("tune_params") or {}, run=top.ref)


def _row(row: dict[str, Any], metric: str | None, refs: dict[str, str]) -> TrialRow:
    value = row.get(metric) if metric else None
    return TrialRow(trial=row.get("trial", -1), value=value if _number(value) else None,
                    params={k: v for k, v in row.items() if k not in NOT_PARAMS and k != metric},
                    run=refs.get(row.get("run")) if row.get("run") else None,
                    seconds=row.get("seconds") if _number(row.get("seconds")) else None)


def _plot_file(request: Request, study: Record, stem: str) -> Path | None:
    """The study folder's `<stem>.png`, resolved, when it is a file inside both the folder and the workspace
    (a symlink leading elsewhere is not followed out)."""
    if not study.path:
        return None
    folder = _inside_workspace(request, Path(study.path))
    path = _inside_workspace(request, Path(study.path) / f"{stem}.png")
    if folder is None or path is None or not path.is_relative_to(folder) or not path.is_file():
        return None
    return path
