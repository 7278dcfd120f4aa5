"""`llmkit tune STAGE`: a hyper-parameter study on Optuna, its trials registered runs of the stage.

`tune(cfg)` checks everything first (stage, dataset, space, metric, storage: a mistake is one line and
nothing is registered), then opens the Optuna study in the registry's own database (or `storage`), so
processes on several machines given the same study name and URL work on one study. It registers the
study (a `run` record of kind `study`), runs trials (here, or in `workers` processes each given its share
of the cores), and at the end registers which trial won: the best trial's model stays, linked to the
study (`best_model`); the other trials' weights are gone unless `keep_trials`.

A new study's first trial runs the stage's config as given (its defaults, or the config file's section)
wherever the space holds those values (`defaults_first`): the best trial is then never worse than not
tuning at all, and the median pruner has a real baseline from the start. FLAML starts from its low-cost
default config for the same reason; Optuna's `enqueue_trial` is the documented way to seed a study.

A worker killed mid-trial stops its heartbeat: any process of the study then marks that trial FAIL
(Optuna's stale-trial check), so no trial stays RUNNING and none is run twice (retries are off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from llmkit.config import TuneConfig, duration_s, validate_section
from llmkit.errors import UserError
from llmkit.registry import Registry, check_name, default_name
from llmkit.runtime.threads import cpu_cores
from llmkit.tune.space import Param, read_space, start_values
from llmkit.tune.stopping import StopSignals, StudyFull, asks_in_turn
from llmkit.tune.trials import (
    DATASET_KIND,
    DEFAULT_METRIC,
    PER_LABEL_METRICS,
    STAGE_METRICS,
    TrialSetup,
    drop_beaten_models,
    drop_run_weights,
    mark_run,
)
from llmkit.workspace import Workspace

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class StudyResult:
    name: str
    record_id: str
    folder: Path
    metric: str
    direction: str
    states: dict[str, int]                      # complete / pruned / fail -> count
    best: dict[str, Any] | None                 # number, value, params, run_id, model (ref)
    trials: list[dict[str, Any]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = ""                        # SIGINT / SIGTERM when a signal ended the study
    exit_code: int = 0                          # 128 + that signal


@dataclass
class Plan:
    """A checked study: everything a trial process needs, written as JSON for worker processes."""

    stage: str
    body: dict[str, Any]
    space: dict[str, Any]                       # as written, re-read (and re-checked) by every worker
    metric: str
    direction: str
    study: str
    storage: str
    registry_url: str
    workspace: str
    trials: int
    deadline: float | None
    pruner: str
    startup_trials: int
    heartbeat: int
    seed: int
    keep_trials: bool
    defaults_first: bool = True
    record_id: str = ""


def tune(cfg: TuneConfig, stage_cfg=None, ws: Workspace | None = None, registry: Registry | None = None,
         console=None) -> StudyResult:
    """Run (or join) the study `cfg` describes; `stage_cfg` is the stage's section every trial starts from."""
    cfg = TuneConfig.given(cfg, "llmkit.tune.tune")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    started = time.time()
    plan, params = check(cfg, stage_cfg, ws, registry)
    study = open_study(plan)
    plan.record_id = study_record(plan, study, ws, registry)
    say = console.print if console is not None else (lambda *_: None)
    if plan.defaults_first and not _defaults_judged(study):  # a new study, or one whose defaults trial never ended
        start = start_values(params, plan.body)
        if start:
            # skip_if_exists: two processes starting one study at once enqueue it once (a joined study's failed or
            # interrupted defaults trial holds the same values: it is run again, so none is skipped there)
            study.enqueue_trial(start, user_attrs={"defaults": True}, skip_if_exists=not study.get_trials(deepcopy=False))
            say("first trial: the config as given, " + ", ".join(f"{k} = {v}" for k, v in start.items()))
    say(f"study [bold]{plan.study}[/bold]: {plan.stage} on {plan.body.get('data')}, {plan.trials} trials, "
        f"{plan.metric} ({plan.direction}), {len(params)} parameters: " + "; ".join(p.describe() for p in params))
    held = trial_count(study)
    if held >= plan.trials:  # a study joined late, or run again: --trials counts the study's trials, not this run's
        say(f"[yellow]study {plan.study} already holds {held} trials, and --trials {plan.trials} counts the study's "
            f"trials over every process: no new trial runs; pass --trials above {held} to add some[/yellow]")
    elif held:
        say(f"joining study {plan.study}: {held} of its {plan.trials} trials exist already")
    if cfg.workers == 1:
        stop = run_trials(plan, params, ws, registry, worker=0, say=say)
    else:
        stop = run_workers(plan, cfg.workers, ws, say)
    result = finish(plan, study, ws, registry, started, say)
    if stop.signal:
        result.stopped_by, result.exit_code = stop.name, stop.exit_code
        say(f"[yellow]stopped by {stop.name}[/yellow]: no new trial started; the same command continues study {plan.study}")
    return result


def check(cfg: TuneConfig, stage_cfg, ws: Workspace, registry: Registry) -> tuple[Plan, list[Param]]:
    """Every mistake a user can make, found before anything is registered."""
    stage = cfg.stage
    body = dict(stage_cfg.model_dump()) if stage_cfg is not None else {}
    if cfg.data:
        body["data"] = cfg.data
    if cfg.base:
        if stage == "pretrain":
            raise UserError("tune pretrain: --base is for the stages that tune a model; pretraining starts from scratch")
        body["base"] = cfg.base
    body = validate_section(stage, body).model_dump()
    if not body.get("data"):
        raise UserError(f"tune {stage}: --data is not set; pass the dataset every trial trains on (llmkit ls datasets)")
    from llmkit.data.dataset import open_dataset

    ds = open_dataset(registry, body["data"])
    if ds.kind != DATASET_KIND[stage]:
        raise UserError(f"tune {stage}: dataset {ds.ref} is a '{ds.kind}' dataset; {stage} needs one prepared with --task {DATASET_KIND[stage]}")
    if body.get("base"):
        from llmkit.models.io import resolve_model

        resolve_model(body["base"], registry)
    space_source = cfg.space or cfg.spaces.model_dump()[stage]
    params = read_space(cfg.space, stage, cfg.spaces.model_dump())
    if any(p.key in ("name", "resume", "data") for p in params):
        raise UserError(f"{cfg.space or 'the space'}: name, resume and data are set by tune, not searched; remove them")
    metric = cfg.metric or DEFAULT_METRIC[stage]
    reported = list(STAGE_METRICS[stage])
    if stage == "classify":
        labels = sorted({r["label"] for r in ds.records("train")})
        reported += [f"{prefix}{label}" for prefix in PER_LABEL_METRICS for label in labels]
    if metric not in reported:
        raise UserError(f"tune {stage}: --metric {metric} is not reported by {stage}'s evaluation; it reports {', '.join(reported)}")
    direction = cfg.direction or ("min" if metric.endswith(("loss", "ppl")) else "max")
    study = check_name(cfg.study, "study", "--study") if cfg.study else default_name(f"tune-{stage}-{ds.name}")
    storage = cfg.storage or registry.url
    plan = Plan(stage, body, _as_written(space_source), metric, direction, study, storage, registry.url, str(ws.root),
                cfg.trials, time.time() + duration_s(cfg.timeout) if cfg.timeout else None, cfg.pruner,
                cfg.startup_trials, cfg.heartbeat, cfg.seed, cfg.keep_trials, cfg.defaults_first)
    return plan, params


def _as_written(source: Any) -> Any:
    if isinstance(source, str):
        import yaml

        return yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    return source


def storage_for(plan: Plan) -> optuna.storages.RDBStorage:
    import warnings

    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if plan.storage.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(plan.storage, engine_kwargs=kwargs, heartbeat_interval=plan.heartbeat,
                                                  grace_period=2 * plan.heartbeat)
            except Exception as err:  # a bad URL, an unreachable server, a missing driver
                if "already exists" in str(err) and attempt < 4:  # another process made Optuna's tables meanwhile
                    time.sleep(0.5)
                    continue
                raise UserError(f"--storage: cannot open '{plan.storage.split('@')[-1]}' as an Optuna storage "
                                f"({' '.join(str(err).split())[:200]}); use the registry's sqlite:/// or postgresql+psycopg:// URL") from None
    raise AssertionError("unreachable")


def _defaults_judged(study: optuna.Study) -> bool:
    """Whether the study's defaults trial (the config as given) completed, was pruned, or is running or waiting: a
    Ctrl-C or a crash in it left the study without the trial that makes its best never worse than no tuning."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return any(t.user_attrs.get("defaults") and t.state in alive for t in study.get_trials(deepcopy=False))


def open_study(plan: Plan, worker: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(plan)
    # TPE with a constant liar: parallel workers do not all draw around the same running trial. Each
    # local worker has its own seed, so two never start from the same random draws.
    sampler = optuna.samplers.TPESampler(seed=plan.seed + worker, constant_liar=True,
                                         n_startup_trials=max(2, min(10, plan.trials // 3)))
    pruner: optuna.pruners.BasePruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=plan.startup_trials, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner}[plan.pruner]()
    study = optuna.create_study(study_name=plan.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize" if plan.direction == "max" else "minimize", load_if_exists=True)
    held = len(study.get_trials(deepcopy=False))
    if held:  # a study run again: the same seed would draw its first trials' values again (TPE's random start)
        study.sampler = optuna.samplers.TPESampler(seed=plan.seed + worker + 7919 * held, constant_liar=True,
                                                   n_startup_trials=max(2, min(10, plan.trials // 3)))
    attrs = study.user_attrs
    mine = {"stage": plan.stage, "metric": plan.metric, "data": plan.body.get("data")}
    # What makes trials comparable: the space searched and the config they start from (a 3-step trial was pruned
    # against 10-step ones of the same study). Studies made before these were kept are not checked on them.
    alike = {"space": json.dumps(plan.space, sort_keys=True, default=str), "base": json.dumps(plan.body, sort_keys=True, default=str)}
    if not attrs:
        for key, value in {**mine, **alike}.items():
            study.set_user_attr(key, value)
    elif any(attrs.get(k) != v for k, v in mine.items()) or study.direction.name.lower()[:3] != plan.direction:
        raise UserError(f"study '{plan.study}' already exists for {attrs.get('stage')} on {attrs.get('data')} "
                        f"optimising {attrs.get('metric')} ({study.direction.name.lower()}); give another --study name")
    elif any(k in attrs and attrs[k] != v for k, v in alike.items()):
        changed = " and ".join(w for k, w in (("space", "search space"), ("base", "base config")) if k in attrs and attrs[k] != alike[k])
        raise UserError(f"study '{plan.study}' was made with another {changed}, so its trials would not compare with "
                        "these; give another --study name, or the same --space and --config to continue it")
    return study


def forget_study(record, registry: Registry) -> str:
    """Delete the Optuna study behind a study record when it lives in the registry's database (`rm STUDY` left it
    there, and a new study of the same name brought the removed trials back); else say where it stays."""
    storage = (record.params or {}).get("storage")
    if storage != registry.url.split("@")[-1]:
        return f"; its Optuna study stays in {storage} (optuna.delete_study removes it)" if storage else ""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.delete_study(study_name=record.name, storage=registry.url)
    except KeyError:  # already gone
        pass
    return "; its Optuna study too"


def study_dependents(record, registry: Registry) -> tuple[list, list]:
    """What `rm STUDY` takes with it and what would stop it: (its trial runs no model was made from, the other
    records made from the study). A study's trials are its own; the best trial's model stays, and so does the run
    it was made from. A 20-trial study took 20 `rm` calls in the right order."""
    trials, others = [], []
    for relation, child in registry.children(record.id):
        if relation == "trial_of" and child.type == "run":
            if any(r.type in ("model", "dataset", "run") for _, r in registry.children(child.id)):
                others.append((relation, child))  # the best model's run: it stays, no longer linked to the study
            else:
                trials.append(child)
        elif relation != "best_of" and child.type in ("model", "dataset", "run"):
            others.append((relation, child))
    return trials, others


def study_record(plan: Plan, study: optuna.Study, ws: Workspace, registry: Registry) -> str:
    """The study's registry record (a run of kind 'study', found again by every process that joins)."""
    record_id = study.user_attrs.get("record_id")
    if record_id and registry.find(record_id, "run") is not None:
        return record_id
    folder = ws.folder("runs", f"{plan.study}-study")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(__import__("yaml").safe_dump(plan.space, sort_keys=False))
    rec = registry.add("run", plan.study, kind="study", path=folder,
                       params={"stage": plan.stage, "data": plan.body.get("data"), "metric": plan.metric,
                               "direction": plan.direction, "trials": plan.trials, "space": plan.space,
                               "storage": plan.storage.split("@")[-1]},
                       parents=[(ds.id, "tuned_on")] if (ds := registry.find(plan.body["data"], "dataset")) else [])
    study.set_user_attr("record_id", rec.id)
    return rec.id


def trial_count(study: optuna.Study) -> int:
    """Trials started (running or ended); an enqueued one still waiting is the next to run, not one more."""
    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))


def run_trials(plan: Plan, params: list[Param], ws: Workspace, registry: Registry, worker: int, say) -> StopSignals:
    """This process's trials, until the study holds `trials` (counted over all processes), time is up or a signal
    ends the study (returned: which one, if any)."""
    study = open_study(plan, worker)
    study = asks_in_turn(study, ws.folder("runs", f"{plan.study}-study") / "ask.lock",
                         full=lambda: trial_count(study) >= plan.trials)
    with StopSignals() as stop:
        setup = TrialSetup(plan.stage, plan.body, params, plan.metric, plan.study, plan.record_id, ws, registry,
                           plan.keep_trials, plan.deadline, on_end=say, stop=stop)
        verbosity = optuna.logging.get_verbosity()
        try:
            while (stop.signal is None and trial_count(study) < plan.trials
                   and (plan.deadline is None or time.time() < plan.deadline)):
                # One trial per call: the count above is read again before each, so processes sharing the study
                # stop together at its total; Optuna fails stale trials at the start of each.
                try:
                    study.optimize(setup.objective, n_trials=1, catch=(Exception,),
                                   callbacks=[] if plan.keep_trials else [lambda s, _t: drop_beaten_models(s, registry)])
                except StudyFull:  # another worker on this machine started the last trial since the count above
                    break
        finally:
            optuna.logging.set_verbosity(verbosity)  # a stopped trial quietened it
    return stop


def run_workers(plan: Plan, workers: int, ws: Workspace, say) -> StopSignals:
    """`workers` processes on this machine, each with cores // workers threads."""
    folder = ws.folder("runs", f"{plan.study}-study")
    spec = folder / "plan.json"
    # The database URLs may hold passwords: they go to the workers in their environment, never into the workspace
    # (a world-readable file that outlived the study and went with every copy of the workspace).
    spec.write_text(json.dumps({**plan.__dict__, "storage": "", "registry_url": ""}))
    threads = max(1, cpu_cores() // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "LLMKIT_TUNE_THREADS": str(threads)}
    env["LLMKIT_TUNE_PARENT"] = str(os.getpid())  # a worker dies with this process (stopping)
    env["LLMKIT_TUNE_STORAGE"], env["LLMKIT_TUNE_REGISTRY_URL"] = plan.storage, plan.registry_url
    with StopSignals() as stop:  # a signal here reaches every worker: each ends its trial and the study
        for i in range(workers):
            log = open(folder / f"worker-{i}.log", "a")
            stop.children.append(subprocess.Popen([sys.executable, "-m", "llmkit.tune.worker", str(spec), str(i)],
                                                  env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        procs = stop.children
        say(f"{workers} worker processes ({threads} threads each): {', '.join(str(p.pid) for p in procs)}; logs in {folder}")
        for i, p in enumerate(procs):
            if p.wait() != 0:  # its running trial, if any, goes FAIL through the heartbeat check in finish()
                say(f"[yellow]worker {i} (pid {p.pid}) exited with {p.returncode}[/yellow]; its log: {folder / f'worker-{i}.log'}")
    spec.unlink(missing_ok=True)
    return stop


def finish(plan: Plan, study: optuna.Study, ws: Workspace, registry: Registry, started: float, say) -> StudyResult:
    """Wait until no trial is RUNNING (a dead worker's goes stale, then FAIL), then register the outcome."""
    import warnings

    from optuna.storages import fail_stale_trials

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            break
        time.sleep(min(plan.heartbeat, 2))
    trials = study.get_trials(deepcopy=False)
    for t in trials:  # a trial whose process died never wrote its state on its run
        run_id = t.user_attrs.get("run_id")
        if t.state == optuna.trial.TrialState.FAIL and run_id:
            rec = registry.find(run_id, "run")
            if rec is not None and rec.metrics.get("tune_state") in (None, "running"):
                mark_run(registry, run_id, plan.study, t.number, "failed", t.params, None, "its worker stopped (heartbeat lost)")
                if not plan.keep_trials:
                    drop_run_weights(registry, run_id)
    if not plan.keep_trials:
        drop_beaten_models(study, registry)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in FINISHED}
    states["stopped_by_budget"] = sum(bool(t.user_attrs.get("stopped_by_budget")) for t in trials)  # among the pruned
    best = None
    try:
        b = study.best_trial
        model_id = b.user_attrs.get("model_id")
        model = registry.find(model_id, "model") if model_id else None
        if model is not None:
            registry.link(model.id, plan.record_id, "best_of")
        best = {"number": b.number, "value": b.value, "params": b.params, "run_id": b.user_attrs.get("run_id"),
                "model": model.ref if model else None, "model_id": model_id}
    except ValueError:
        errors = [t.user_attrs["error"] for t in trials if t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs]
        if errors and len(errors) == len(trials):  # every trial failed: more time or trials would fail the same way
            from rich.markup import escape  # the error may quote what the user typed, [brackets] and all

            say(f"[yellow]no trial completed[/yellow]: every trial failed, the first with: {escape(errors[0])}")
        else:
            say("[yellow]no trial completed[/yellow]: nothing to keep; raise --timeout or --trials, or narrow the space")
    from llmkit.tune.reports import best_rows, write_reports

    folder = ws.folder("runs", f"{plan.study}-study")
    reports = [str(p) for p in write_reports(study, folder, plan.metric)]
    rows = best_rows(study, plan.metric, 10)
    registry.update_metrics(plan.record_id, {"states": states, "best": best, "best_trials": rows, "reports": reports,
                                             "metric": plan.metric, "direction": plan.direction})
    result = StudyResult(plan.study, plan.record_id, folder, plan.metric, plan.direction, states, best, rows, reports,
                         round(time.time() - started, 1))
    if best is not None:
        say(f"best: trial {best['number']} {plan.metric} {best['value']:.4f} with {best['params']}; model {best['model']}")
    say(f"{len(trials)} trials ({', '.join(f'{v} {k}' for k, v in states.items())}); reports in {folder}")
    return result
