"""Resuming a run that has finished: from where it ended, never from an older checkpoint.

A run stopped with Ctrl-C at step 788, resumed with checkpoint_every past its end, ran to 3000 and registered
v1; `--resume` after that found only the Ctrl-C checkpoint, said "resuming at step 788", trained to 3000 again and
registered v2, then v3, v4 on every further resume (`--max-steps 3010` too). The end of a run is now a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.checkpoint import TrainingInterrupted, list_checkpoints
from llmkit.train.metrics import read_metrics
from llmkit.workspace import Workspace
from tests.conftest import tiny_config


def _loss_steps(run_dir: Path) -> list[int]:
    """The step of every loss row in the order written: a step trained twice appears twice."""
    return [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if "loss" in row]


def _models_of(registry: Registry, run_id: str) -> list:
    return [child for relation, child in registry.children(run_id) if relation == "produced_by"]


def test_a_finished_pretraining_run_resumes_from_its_end_and_a_second_resume_registers_nothing(
        lm_workspace: Path, cli_here):
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    same = {"eval_every": 3, "checkpoint_every": 100}  # checkpoint_every past the run's end, as the tester's
    first = pretrain(tiny_config(name="ends-ckpt", max_steps=3, **same), ws, registry)
    run_id, run_dir = first.lineage["run"]["id"], Path(first.lineage["run"]["path"])
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000003"]  # the end is a checkpoint

    # a larger --max-steps continues from the end (step 3), not from the start or an older checkpoint
    console = Console(record=True, width=300)
    more = pretrain(tiny_config(name="ends-ckpt", resume=run_id, max_steps=5, **same), ws, registry, console=console)
    assert f"run {run_id} at {run_dir} (resuming at step 3)" in console.export_text()
    assert more.lineage["metrics"]["steps"] == 5 and more.version == first.version + 1
    assert _loss_steps(run_dir) == [1, 2, 3, 4, 5]  # no step trained twice

    # through the CLI, as the tester ran it: no steps left says so in one line, exit 2, and registers nothing
    models = len(registry.list("model"))
    for extra in ([], ["--max-steps", "5"]):
        out = cli_here("train", "pretrain", "--resume", run_id, *extra, workspace=lm_workspace)
        said = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 2, said
        assert f"run {run_id} already trained 5 steps and its model holds them: nothing to train; pass a --max-steps " \
               "above 5 to continue it" in said
        assert "Traceback" not in said
    assert len(registry.list("model")) == models and len(_models_of(registry, run_id)) == 2
    assert _loss_steps(run_dir) == [1, 2, 3, 4, 5]


def test_a_run_finished_by_an_older_llmkit_past_its_last_checkpoint_is_refused_not_retrained(lm_workspace: Path):
    """Runs made before the end was a checkpoint (the tester's d65777e9c668: a checkpoint at 788, a model at 3000)
    would still retrain from the old checkpoint: refused, saying why."""
    import shutil

    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    same = {"eval_every": 2, "checkpoint_every": 2}
    made = pretrain(tiny_config(name="old-end", max_steps=5, **same), ws, registry)
    run_id, run_dir = made.lineage["run"]["id"], Path(made.lineage["run"]["path"])
    for late in list_checkpoints(run_dir):  # as an older llmkit left it: the last at step 4
        if late.name > "step-000004":
            shutil.rmtree(late)
    assert [c.name for c in list_checkpoints(run_dir)][-1] == "step-000004"
    models = len(registry.list("model"))
    for steps in (5, 7):
        with pytest.raises(UserError, match=rf"pretrain.resume = '{run_id}': run {run_id} finished at step 5 but its "
                                            r"last checkpoint is step 4 .* so resuming would train again from step 4"):
            pretrain(tiny_config(name="old-end", resume=run_id, max_steps=steps, **same), ws, registry)
    assert len(registry.list("model")) == models
    from llmkit.registry.run_state import run_state

    assert run_state(registry.get(run_id).metrics) == "finished"


def test_an_interrupted_then_finished_lora_sft_run_resumes_from_its_end(lm_workspace: Path, tiny_model, chat_data):
    """The tester's sequence on `train sft`: Ctrl-C (a stop at step 2), resume to the end with checkpoint_every past
    it, then resume again: nothing to train; a larger max_steps goes on from the end."""
    from llmkit.config import LoraConfig, SftConfig
    from llmkit.train.supervised import sft

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)

    def cfg(**kw) -> SftConfig:
        return SftConfig(**{"base": "tiny-lm", "data": chat_data, "method": "lora", "max_steps": 4, "batch_size": 2,
                            "max_length": 96, "skip_bad": True, "eval_max_examples": 2, "eval_every": 2,
                            "checkpoint_every": 100, "name": "sft-ends", "lora": LoraConfig(r=4, alpha=8, dropout=0.0),
                            **kw})

    with pytest.raises(TrainingInterrupted) as stop:
        sft(cfg(), ws, registry, stop_at_step=2)
    run_id = stop.value.run_id
    run_dir = Path(registry.get(run_id).path)
    finished = sft(cfg(resume=run_id), ws, registry)
    assert finished.lineage["metrics"]["steps"] == 4
    assert [c.name for c in list_checkpoints(run_dir)][-1] == "step-000004"
    models = len(registry.list("model"))
    with pytest.raises(UserError, match=rf"run {run_id} already trained 4 steps and its model holds them: nothing to "
                                        r"train; pass a --max-steps above 4"):
        sft(cfg(resume=run_id), ws, registry)
    assert len(registry.list("model")) == models

    console = Console(record=True, width=300)
    longer = sft(cfg(resume=run_id, max_steps=6), ws, registry, console=console)
    assert "(resuming at step 4)" in console.export_text()
    assert longer.lineage["metrics"]["steps"] == 6 and longer.path != finished.path
    assert _loss_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "run.json").read_text())["id"] == run_id


def test_a_run_that_stopped_early_resumes_to_nothing_to_train(lm_workspace: Path):
    """An early stop ends the run too: its resume went on from an older checkpoint (or, with the end checkpointed,
    stopped again at the next evaluation), registering a version each time."""
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    # lr 1e-12 leaves the weights as they were: the second evaluation is no better, and early_stopping 1 stops there
    same = {"eval_every": 2, "checkpoint_every": 100, "early_stopping": 1, "lr": 1e-12}
    made = pretrain(tiny_config(name="early-end", max_steps=20, **same), ws, registry)
    run_id, run_dir = made.lineage["run"]["id"], Path(made.lineage["run"]["path"])
    assert made.lineage["metrics"]["stopped_early"] and made.lineage["metrics"]["steps"] == 4
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000004"]
    models = len(registry.list("model"))
    for steps in (20, 30):
        with pytest.raises(UserError, match=rf"run {run_id} stopped early at step 4 \(1 evaluation without a better "
                                            r"val_loss\) and its model holds them: nothing to train"):
            pretrain(tiny_config(name="early-end", resume=run_id, max_steps=steps, **same), ws, registry)
    assert len(registry.list("model")) == models and _loss_steps(run_dir) == [1, 2, 3, 4]
