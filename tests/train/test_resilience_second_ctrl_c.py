"""A second Ctrl-C ("stop now") between checkpoints: the run is stopped, not failed, says how to resume, and the
resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from llmkit.registry import Registry
from llmkit.registry.run_state import STOPPED, run_state
from llmkit.train import pretrain
from llmkit.train.checkpoint import TrainingInterrupted
from llmkit.train.loop import watching
from llmkit.train.metrics import read_metrics
from llmkit.workspace import Workspace
from tests.conftest import tiny_config


def test_a_second_ctrl_c_leaves_a_stopped_run_that_resumes_to_the_uninterrupted_result(lm_workspace: Path) -> None:
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    whole = pretrain(tiny_config(name="ctrl-c-whole"), ws, registry)

    def ctrl_c_twice(_run: str, step: int, _evaluation) -> None:
        if step == 15:  # past the checkpoint of step 10, before the next: the second signal raises here
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with watching(ctrl_c_twice), pytest.raises(TrainingInterrupted) as stop:
        pretrain(tiny_config(name="ctrl-c-twice"), ws, registry)
    run_id = stop.value.run_id
    assert stop.value.step == 10
    assert str(stop.value) == f"stopped at step 10; continue with: llmkit train pretrain --resume {run_id}"
    run = registry.get(run_id, "run")
    assert run_state(run.metrics) == STOPPED and run.metrics["note"] == str(stop.value)

    resumed = pretrain(tiny_config(name="ctrl-c-twice", resume=run_id), ws, registry)
    losses = {r["step"]: r["loss"] for r in read_metrics(Path(run.path) / "metrics.jsonl") if "loss" in r}
    whole_run = json.loads((Path(whole.path) / "llmkit.json").read_text())["run"]["path"]
    whole_losses = {r["step"]: r["loss"] for r in read_metrics(Path(whole_run) / "metrics.jsonl") if "loss" in r}
    assert losses == whole_losses and len(losses) == 20
    # steps 11-15, logged before the stop and trained again after the checkpoint of step 10, are in the file once
    assert [r["step"] for r in read_metrics(Path(run.path) / "metrics.jsonl") if "loss" in r] == list(range(1, 21))
    assert resumed.lineage["metrics"]["val_loss"] == whole.lineage["metrics"]["val_loss"]
    registry.close()
