"""One trial: the stage run with the values Optuna drew, watched through the training loop's evaluations.

Each trial is an ordinary registered run of its stage (named `<study>-t<number>`), linked to the study
record (`trial_of`), its state written on the run (`tune_state`: complete, pruned or failed) with the
values drawn and the metric. Every evaluation the loop makes is reported to Optuna; when the pruner says
so, the watcher raises `optuna.TrialPruned` and the run ends there. Weights are not kept: a trial's
checkpoints go as soon as it ends, and a completed trial's model as soon as another trial beats it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from llmkit.config import validate_section
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.registry.run_state import FINISHED
from llmkit.train.checkpoint import TrainingInterrupted
from llmkit.train.loop import watching
from llmkit.tune.space import Param, with_values
from llmkit.tune.stopping import StopSignals, StudyStopped
from llmkit.workspace import Workspace

# What each stage's evaluation reports, and the metric its own best-weights choice uses.
_PAIRS = ("val_loss", "val_reward_margin", "val_reward_accuracy")
STAGE_METRICS = {"pretrain": ("val_loss", "val_ppl"), "sft": ("val_loss", "val_ppl"),
                 "classify": ("val_accuracy", "val_macro_f1"), "dpo": _PAIRS, "orpo": (*_PAIRS, "val_nll"),
                 "kto": ("val_loss", "val_reward_margin"), "grpo": ("val_reward", "val_answer_tokens")}
PER_LABEL_METRICS = ("val_precision_", "val_recall_", "val_f1_")  # classify, one per label
# The default space searches beta, and DPO's and ORPO's loss (and reward margin) move with beta itself: ranked by
# val_loss, a search favoured large beta whatever it did to the model. The share of pairs ranked right does not
# scale with beta. KTO reports nothing that does not, so its default space leaves beta alone (`KtoSpace`).
DEFAULT_METRIC = {"pretrain": "val_loss", "sft": "val_loss", "classify": "val_macro_f1", "dpo": "val_reward_accuracy",
                  "orpo": "val_reward_accuracy", "kto": "val_loss", "grpo": "val_reward"}
DATASET_KIND = {"pretrain": "lm", "sft": "chat", "classify": "classify", "dpo": "preference", "orpo": "preference",
                "kto": "preference", "grpo": "chat"}


def run_stage(stage: str, cfg, ws: Workspace, registry: Registry, console=None):
    from llmkit.train import classify, pretrain, sft

    if stage in ("dpo", "orpo", "kto"):
        from llmkit.train.preference import preference_tune

        return preference_tune(cfg, stage, ws, registry, console=console)
    if stage == "grpo":
        from llmkit.train.grpo import grpo

        return grpo(cfg, ws, registry, console=console)
    run = {"pretrain": pretrain, "sft": sft, "classify": classify}[stage]
    return run(cfg, ws, registry, console=console)


@dataclass
class TrialSetup:
    """What every trial of one process shares."""

    stage: str
    body: dict[str, Any]            # the stage's section every trial starts from (data, base, config file)
    params: list[Param]
    metric: str
    study_name: str
    study_record: str               # registry id of the study record
    ws: Workspace
    registry: Registry
    keep_trials: bool = False
    deadline: float | None = None   # time.time() after which a running trial stops (pruned)
    console: Any = None
    on_end: Callable[[str], None] = field(default=lambda line: None)  # one line per finished trial
    stop: StopSignals = field(default_factory=StopSignals)  # a signal ends the study, not just its trial

    def objective(self, trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in self.params}
        name = f"{self.study_name}-t{trial.number}"
        cfg = validate_section(self.stage, {**with_values(self.body, values), "name": name, "resume": None})
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        seen: dict[str, Any] = {"run_id": None, "evals": 0, "value": None}

        def watch(run_id: str, step: int, evaluation: dict[str, float] | None) -> None:
            if seen["run_id"] is None:  # the run exists from its first step: tie it to the trial at once
                seen["run_id"] = run_id
                trial.set_user_attr("run_id", run_id)
                self.registry.link(run_id, self.study_record, "trial_of")
                mark_run(self.registry, run_id, self.study_name, trial.number, "running", values)
            if evaluation is not None and self.metric in evaluation:
                seen["evals"] += 1
                seen["value"] = float(evaluation[self.metric])
                trial.report(seen["value"], seen["evals"])  # the k-th evaluation of every trial is compared
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at evaluation {seen['evals']} (step {step}): "
                                             f"{self.metric} {seen['value']:.4f}")
            if self.stop.signal is not None:  # it came before the training loop took the signals over
                raise StudyStopped(f"stopped by {self.stop.name}")
            if self.deadline is not None and time.time() > self.deadline:
                trial.set_user_attr("stopped_by_budget", True)  # pruned in Optuna's eyes, but not for being poor
                raise optuna.TrialPruned(f"stopped by the time budget at step {step}")

        started = time.time()
        try:
            with watching(watch):
                model = run_stage(self.stage, cfg, self.ws, self.registry, console=None)
        except optuna.TrialPruned as pruned:
            self._ended(seen["run_id"], trial.number, "pruned", values, seen["value"], str(pruned))
            raise
        except (TrainingInterrupted, StudyStopped, KeyboardInterrupt) as err:  # the study ends: no new trial
            self.stop.signal = self.stop.signal or getattr(err, "signal", None) or signal.SIGINT
            self._ended(seen["run_id"], trial.number, "failed", values, seen["value"], f"stopped by {self.stop.name}")
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # Optuna's traceback of the failed trial says nothing more
            raise
        except BaseException as err:  # any other failure: the run is failed, Optuna records it, the study goes on
            why = f"{type(err).__name__}: {err}" if not isinstance(err, UserError) else str(err)
            trial.set_user_attr("error", " ".join(why.split())[:300])  # the study's summary says it if nothing completed
            self._ended(seen["run_id"], trial.number, "failed", values, seen["value"], f"{type(err).__name__}: {err}")
            raise
        metrics = (model.lineage or {}).get("metrics", {})
        if self.metric not in metrics:
            raise UserError(f"the {self.stage} run reported no {self.metric}; it reports {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        trial.set_user_attr("model_id", model.id)
        trial.set_user_attr("model_path", str(model.path))
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        self._ended(seen["run_id"], trial.number, "complete", values, value, f"{self.metric} {value:.4f}")
        return value

    def _ended(self, run_id: str | None, number: int, state: str, values: dict, value: float | None, note: str) -> None:
        if run_id is not None:
            mark_run(self.registry, run_id, self.study_name, number, state, values, value, note)
            if not self.keep_trials:
                drop_run_weights(self.registry, run_id)
        self.on_end(f"trial {number} {state}: {note}; " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))


def mark_run(registry: Registry, run_id: str, study: str, number: int, state: str, values: dict,
             value: float | None = None, note: str = "") -> None:
    registry.update_metrics(run_id, {"state": {"complete": FINISHED}.get(state, state), "tune_study": study,
                                     "tune_trial": number, "tune_state": state,
                                     "tune_params": values, "tune_value": value, "tune_note": note})


def drop_run_weights(registry: Registry, run_id: str) -> None:
    """A trial run keeps its config, metrics and plots; its checkpoints and best weights go."""
    rec = registry.find(run_id, "run")
    if rec is not None and rec.path:
        for sub in ("checkpoints", "best"):
            shutil.rmtree(Path(rec.path) / sub, ignore_errors=True)


def drop_beaten_models(study: optuna.Study, registry: Registry) -> None:
    """Remove the model of every completed trial but the best (records and folders): disk stays bounded.
    Run after each trial by every process; removing twice is harmless."""
    try:
        best = study.best_trial.number
    except ValueError:  # no completed trial yet
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        model_id = t.user_attrs.get("model_id")
        if t.number == best or not model_id:
            continue
        if registry.find(model_id, "model") is not None:
            registry.remove(model_id)
        if t.user_attrs.get("model_path"):
            shutil.rmtree(t.user_attrs["model_path"], ignore_errors=True)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
