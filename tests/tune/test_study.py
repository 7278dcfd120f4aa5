"""`llmkit tune` on real tiny pretraining runs: trials are registered runs with their state, the study a
record, the best model kept and linked, the rest of the weights gone; bad input is one line and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from llmkit.config import DataConfig, TuneConfig
from llmkit.data.pipeline import prepare
from llmkit.registry import Registry
from llmkit.tune import tune
from llmkit.tune.space import read_space
from llmkit.tune.trials import TrialSetup
from llmkit.workspace import Workspace
from tests.conftest import tiny_config

SPACE = "lr: {log-float: [1.0e-3, 1.0e-2]}\nwarmup_steps: {int: [0, 4]}\n"


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("tune-ws")
    (root / "s.txt").write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:40_000])
    ws = Workspace.open(root)
    prepare(DataConfig(inputs=[str(root / "s.txt")], name="tiny", task="lm", tokenizer="char", doc_split="blank-line",
                       splits={"val": 0.1, "test": 0.05}), ws, Registry.for_workspace(ws.root))
    (root / "space.yaml").write_text(SPACE)
    return root


def _cli(monkeypatch, capsys, root: Path, *args: str) -> tuple[int, str, str]:
    from llmkit.cli import main

    monkeypatch.setenv("LLMKIT_HOME", str(root))
    monkeypatch.setattr(sys, "argv", ["llmkit", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    out = capsys.readouterr()
    return ex.value.code, out.out, out.err


def test_a_study_registers_every_trial_and_keeps_only_the_best_model(ws_root: Path, monkeypatch, capsys):
    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    cfg = TuneConfig(stage="pretrain", data="tiny", space=str(ws_root / "space.yaml"), trials=3, study="pt", startup_trials=1)
    result = tune(cfg, tiny_config(max_steps=8, eval_every=4, checkpoint_every=4), ws, registry)

    assert sum(result.states[s] for s in ("complete", "pruned", "fail")) == 3 and result.states["complete"] >= 1
    trials = [r for rel, r in registry.children(result.record_id) if rel == "trial_of"]
    assert len(trials) == 3 and {r.type for r in trials} == {"run"}
    for run in trials:
        assert run.metrics["tune_state"] in ("complete", "pruned") and run.metrics["tune_study"] == "pt"
        assert run.metrics["state"] == {"complete": "finished"}.get(run.metrics["tune_state"], "pruned")
        assert set(run.metrics["tune_params"]) == {"lr", "warmup_steps"}
        assert not (Path(run.path) / "checkpoints").exists() and not (Path(run.path) / "best").exists()
    best_models = [r for rel, r in registry.children(result.record_id) if rel == "best_of"]
    assert [m.id for m in best_models] == [result.best["model_id"]] and Path(best_models[0].path).is_dir()
    assert [m.id for m in registry.list("model")] == [result.best["model_id"]]  # the beaten trials' models are gone
    assert len(list((ws_root / "models").iterdir())) == 1
    assert (result.folder / "history.png").stat().st_size > 1000
    best_run = registry.get(result.best["run_id"], "run")
    assert best_run.metrics["tune_value"] == pytest.approx(result.best["value"])

    code, out, _ = _cli(monkeypatch, capsys, ws_root, "show", "pt")
    assert code == 0 and "best trials by val_loss" in out and f"best model {best_models[0].ref}" in out


def _small_study(ws_root: Path, study: str, trials: int, lr: float, warmup_steps: int):
    """(workspace, registry, the pretrain config as given, the tune config) of a study of 4-step tiny trials."""
    ws = Workspace.open(ws_root)
    stage = tiny_config(max_steps=4, eval_every=2, checkpoint_every=2, lr=lr, warmup_steps=warmup_steps)
    cfg = TuneConfig(stage="pretrain", data="tiny", space=str(ws_root / "space.yaml"), trials=trials, study=study,
                     startup_trials=1)
    return ws, Registry.for_workspace(ws.root), stage, cfg


def test_a_new_study_first_runs_the_config_as_given_and_a_joined_study_does_not_again(ws_root: Path):
    ws, registry, stage, cfg = _small_study(ws_root, "from-defaults", 2, lr=2e-3, warmup_steps=3)
    tune(cfg, stage, ws, registry)
    tune(cfg.model_copy(update={"trials": 3}), stage, ws, registry)  # joins the study: one more trial, drawn
    trials = optuna.load_study(study_name="from-defaults", storage=registry.url).get_trials()
    assert trials[0].params == {"lr": 2e-3, "warmup_steps": 3} and trials[0].user_attrs["defaults"] is True
    assert len(trials) == 3 and not any(t.user_attrs.get("defaults") for t in trials[1:])
    assert all(t.params != trials[0].params for t in trials[1:])
    assert trials[2].params != trials[1].params  # the run that joined drew afresh (the same seed drew trial 1 again)
    # --trials counts the study's trials: at or below what it holds, nothing runs, and it says so (it was silent)
    import io

    from rich.console import Console

    said = io.StringIO()
    tune(cfg, stage, ws, registry, console=Console(file=said, width=300))
    assert "study from-defaults already holds 3 trials" in said.getvalue() and "pass --trials above 3" in said.getvalue()
    assert len(optuna.load_study(study_name="from-defaults", storage=registry.url).get_trials()) == 3

    # a value outside the space is drawn as usual (lr 0.5 is not in [1e-3, 1e-2]); defaults_first off: all drawn
    tune(cfg.model_copy(update={"trials": 1, "study": "half-defaults"}), stage.model_copy(update={"lr": 0.5}), ws, registry)
    first = optuna.load_study(study_name="half-defaults", storage=registry.url).get_trials()[0]
    assert first.params["warmup_steps"] == 3 and 1e-3 <= first.params["lr"] <= 1e-2
    tune(cfg.model_copy(update={"trials": 1, "study": "drawn", "defaults_first": False}), stage, ws, registry)
    drawn = optuna.load_study(study_name="drawn", storage=registry.url).get_trials()[0]
    assert "defaults" not in drawn.user_attrs and drawn.params["lr"] != 2e-3


def test_a_defaults_trial_that_did_not_end_is_run_again_when_the_study_is(ws_root: Path):
    # a Ctrl-C or a crash in the first trial left the study without the config as given, for good: its best was no
    # longer sure to be at least as good as not tuning
    from llmkit.train.loop import watching

    ws, registry, stage, cfg = _small_study(ws_root, "cut-defaults", 1, lr=3e-3, warmup_steps=2)
    crashed = []

    def crash_once(_run: str, step: int, _evaluation) -> None:
        if not crashed:
            crashed.append(step)
            raise RuntimeError("the machine went down")

    import io

    from rich.console import Console

    said = io.StringIO()
    with watching(crash_once):
        tune(cfg, stage, ws, registry, console=Console(file=said, width=300))
    # every trial failed: the summary says with what (it advised a larger --timeout or --trials, which fail alike)
    assert "no trial completed: every trial failed, the first with: RuntimeError: the machine went down" in said.getvalue()
    first = optuna.load_study(study_name="cut-defaults", storage=registry.url).get_trials()
    assert [(t.state.name, t.user_attrs.get("defaults")) for t in first] == [("FAIL", True)]
    tune(cfg.model_copy(update={"trials": 2}), stage, ws, registry)
    trials = optuna.load_study(study_name="cut-defaults", storage=registry.url).get_trials()
    assert trials[1].params == {"lr": 3e-3, "warmup_steps": 2} and trials[1].user_attrs["defaults"] is True
    assert trials[1].state.name == "COMPLETE"


def test_a_pruned_trial_stops_at_its_evaluation_and_is_recorded_pruned(ws_root: Path):
    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    study_rec = registry.add("run", "pruning-study", kind="study")
    # Optuna's threshold pruner: any val_loss above 0 stops the trial at its first report.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    setup = TrialSetup("pretrain", tiny_config(max_steps=12, eval_every=3, checkpoint_every=3).model_dump(),
                       read_space(ws_root / "space.yaml", "pretrain"), "val_loss", "pruning", study_rec.id, ws, registry)
    study.optimize(setup.objective, n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run = registry.get(trial.user_attrs["run_id"], "run")
    assert run.metrics["tune_state"] == "pruned" and "evaluation 1 (step 3)" in run.metrics["tune_note"]
    assert run.metrics["state"] == "pruned"
    steps = [row["step"] for row in map(__import__("json").loads, (Path(run.path) / "metrics.jsonl").read_text().splitlines())]
    assert max(steps) == 3  # the run ended at the evaluation that pruned it
    assert registry.find("pruning-t0", "model") is None


def test_loss_and_perplexity_are_minimised_by_default_and_a_given_direction_wins(ws_root: Path):
    """val_ppl falls as the model improves, like val_loss: a study that maximised it kept the worst trial."""
    from llmkit.tune.study import check

    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    runs = len(registry.list("run"))
    cfg = TuneConfig(stage="pretrain", data="tiny", space=str(ws_root / "space.yaml"), study="direction")
    for metric, direction, given in (("val_loss", "min", None), ("val_ppl", "min", None), ("val_ppl", "max", "max")):
        plan, _ = check(cfg.model_copy(update={"metric": metric, "direction": given}), tiny_config(), ws, registry)
        assert (plan.metric, plan.direction) == (metric, direction)
    assert len(registry.list("run")) == runs  # checking registers nothing


@pytest.mark.parametrize(("args", "says"), [
    (["--space", "bad-key.yaml"], "unknown pretrain key 'lrr' (did you mean 'lr'?)"),
    (["--space", "empty-range.yaml"], "the range [0.01, 0.001] is empty"),
    (["--metric", "val_accuracy"], "--metric val_accuracy is not reported by pretrain's evaluation; it reports val_loss, val_ppl"),
    (["--data", "nope"], "nope"),
], ids=["unknown-key", "empty-range", "unreported-metric", "unknown-dataset"])
def test_bad_input_is_one_line_exit_2_and_registers_nothing(ws_root: Path, monkeypatch, capsys, args, says):
    (ws_root / "bad-key.yaml").write_text("lrr: {float: [0.1, 0.2]}\n")
    (ws_root / "empty-range.yaml").write_text("lr: {float: [0.01, 0.001]}\n")
    monkeypatch.chdir(ws_root)
    before = len(Registry.for_workspace(ws_root).list())
    base = ["tune", "pretrain", "--data", "tiny", "--trials", "2", "--study", "never"]
    code, _, err = _cli(monkeypatch, capsys, ws_root, *base, *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err
    assert len(Registry.for_workspace(ws_root).list()) == before


def test_the_time_budget_stops_the_running_trial_and_starts_no_other(ws_root: Path, monkeypatch, capsys):
    import json

    from tests.conftest import write_tiny_config

    config = write_tiny_config(ws_root / "long.yaml", max_steps=100_000, eval_every=50, checkpoint_every=100_000,
                               batch_size=4, context=32)
    started = __import__("time").time()
    code, out, err = _cli(monkeypatch, capsys, ws_root, "tune", "pretrain", "--data", "tiny", "--space",
                          str(ws_root / "space.yaml"), "--trials", "50", "--timeout", "5s", "--study", "budget",
                          "--config", str(config), "--json")
    assert code == 1, err  # no trial completed: nothing to keep, and a script must not go on as if there were
    result = json.loads(out)
    assert result["states"] == {"complete": 0, "pruned": 1, "fail": 0, "stopped_by_budget": 1} and result["best"] is None
    assert __import__("time").time() - started < 120  # the 100,000-step trial did not run on
    run = [r for rel, r in Registry.for_workspace(ws_root).children(result["id"]) if rel == "trial_of"][0]
    assert run.metrics["tune_state"] == "pruned" and "time budget" in run.metrics["tune_note"]
    code, out, err = _cli(monkeypatch, capsys, ws_root, "tune", "pretrain", "--data", "tiny", "--space",
                          str(ws_root / "space.yaml"), "--trials", "50", "--timeout", "2s", "--study", "budget-human",
                          "--config", str(config))
    assert code == 1 and "no trial completed" in out + err
    assert "best trials by" not in out  # a table of headers alone, under the line that said there was nothing


def test_a_study_continues_only_on_its_own_space_and_config_and_rm_takes_its_optuna_study_too(ws_root: Path, monkeypatch,
                                                                                                 capsys):
    """A study joined with another space or base config mixed trials that do not compare (a 3-step trial was pruned
    against 10-step ones), and `rm STUDY` left its Optuna study, whose trials came back under the same name."""
    from llmkit.errors import UserError

    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    stage = tiny_config(max_steps=2, eval_every=2, checkpoint_every=2)
    cfg = TuneConfig(stage="pretrain", data="tiny", space=str(ws_root / "space.yaml"), trials=1, study="kept-alike")
    tune(cfg, stage, ws, registry)
    other = ws_root / "other-space.yaml"
    other.write_text("weight_decay: {float: [0.0, 0.1]}\n")
    with pytest.raises(UserError, match="study 'kept-alike' was made with another search space"):
        tune(cfg.model_copy(update={"space": str(other), "trials": 2}), stage, ws, registry)
    with pytest.raises(UserError, match="another base config, so its trials would not compare"):
        tune(cfg.model_copy(update={"trials": 2}), stage.model_copy(update={"max_steps": 4}), ws, registry)
    tune(cfg.model_copy(update={"trials": 3}), stage, ws, registry)  # two more trials: three runs, one best model
    runs = [r for rel, r in registry.children(registry.get("kept-alike", "run").id) if rel == "trial_of"]
    best = registry.get("kept-alike-t0", "model") if registry.find("kept-alike-t0", "model") else None
    assert len(runs) == 3
    # rm STUDY takes its trial runs (it was refused: "made from" by each, 20 rm calls for 20 trials); the best
    # trial's model stays, and so does the run it was made from
    code, out, err = _cli(monkeypatch, capsys, ws_root, "rm", "kept-alike", "--yes")
    assert code in (0, None) and "its Optuna study too" in out, (out, err)
    kept_models = [m for m in registry.list("model") if m.name.startswith("kept-alike-t")]
    assert len(kept_models) == 1 and (best is None or kept_models[0].id == best.id)
    left = [r for r in runs if registry.find(r.id, "run") is not None]
    assert [r.id for r in left] == [p.id for _, p in registry.parents(kept_models[0].id) if p.type == "run"]
    assert all(not Path(r.path).exists() for r in runs if r not in left)
    assert f"with its {len(runs) - 1} trial runs" in " ".join(out.split())
    with pytest.raises(KeyError):
        optuna.load_study(study_name="kept-alike", storage=registry.url)


def test_the_models_llama_fields_can_be_searched(ws_root: Path):
    """pretrain.model takes LlamaConfig fields; a space may search them ('model.num_hidden_layers', or nested)."""
    import json

    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    space = ws_root / "layers.yaml"
    space.write_text("model:\n  num_hidden_layers: {int: [1, 3]}\n")
    cfg = TuneConfig(stage="pretrain", data="tiny", space=str(space), trials=2, study="layers", startup_trials=1)
    result = tune(cfg, tiny_config(max_steps=4, eval_every=4, checkpoint_every=4), ws, registry)
    trials = [r for rel, r in registry.children(result.record_id) if rel == "trial_of"]
    assert {tuple(r.metrics["tune_params"]) for r in trials} == {("model.num_hidden_layers",)}
    best_run = registry.get(result.best["run_id"], "run")
    layers = best_run.metrics["tune_params"]["model.num_hidden_layers"]
    model = registry.get(result.best["model_id"], "model")
    assert json.loads((Path(model.path) / "config.json").read_text())["num_hidden_layers"] == layers


def test_a_study_whose_every_trial_fails_runs_the_trials_asked_for(ws_root: Path):
    # in one process the count holds; two local workers could each start the last trial (test_stopping's race test)
    from llmkit.train.loop import watching

    ws, registry, stage, cfg = _small_study(ws_root, "all-fail", 4, lr=3e-3, warmup_steps=2)

    def crash(_run: str, step: int, _evaluation) -> None:
        raise RuntimeError("out of memory")

    with watching(crash):
        tune(cfg, stage, ws, registry)
    trials = optuna.load_study(study_name="all-fail", storage=registry.url).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] * 4, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert sum(bool(t.user_attrs.get("defaults")) for t in trials) == 1  # the config as given once, not again each time
