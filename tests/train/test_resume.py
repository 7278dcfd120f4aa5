"""Exact resume after kill -9, and a kill during a checkpoint write, with real killed processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmkit.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from llmkit.train.metrics import MetricsLog, read_metrics
from tests.conftest import TINY_FLAGS, write_tiny_config


def _losses(run_dir: Path) -> dict[int, float]:
    losses = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):  # complete rows: the run may be writing one now
        if "loss" in row:
            losses[row["step"]] = row["loss"]  # a redone step replaces the first try
    return losses


def _train_cmd(config: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmkit", "train", "pretrain", "--data", "tiny", "--config", str(config),
            "--name", name, "--max-steps", "100", "--checkpoint-every", "10", "--eval-every", "50", *TINY_FLAGS, *extra]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(lm_workspace: Path, tmp_path: Path, cli_here):
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace), "OMP_NUM_THREADS": "1"}
    config = write_tiny_config(tmp_path / "tiny.yaml")
    full = subprocess.run(_train_cmd(config, "uninterrupted", "--json"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    full_run = Path(json.loads(full.stdout)["path"]).name.split("-")[-1]
    full_losses = _losses(next(p for p in (lm_workspace / "runs").iterdir() if p.name.startswith("uninterrupted-")))
    assert len(full_losses) == 100 and full_run

    proc = subprocess.Popen(_train_cmd(config, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = None
    deadline = time.time() + 300
    while time.time() < deadline:
        runs = [p for p in (lm_workspace / "runs").iterdir() if p.name.startswith("killed-")]
        if runs and (runs[0] / "metrics.jsonl").exists() and max(_losses(runs[0]), default=0) >= 60:
            run_dir = runs[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the run never reached step 60"
    killed_at = max(_losses(run_dir))
    assert killed_at < 100, "the run finished before it was killed"
    # The killed process wrote nothing more: its run reads as died, and show says how to go on.
    run_id = json.loads((run_dir / "run.json").read_text())["id"]
    listed = json.loads(cli_here("ls", "runs", "--json", workspace=lm_workspace, check=True).stdout)
    assert {r["id"]: r["state"] for r in listed}[run_id] == "died"
    shown = cli_here("show", run_id, workspace=lm_workspace, check=True).stdout
    assert f"continue with: llmkit train pretrain --resume {run_id}" in " ".join(shown.split())

    resumed = subprocess.run([sys.executable, "-m", "llmkit", "train", "pretrain", "--resume", str(run_dir)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # the prompt suggested is the start of a val record of its data (it was 'Once upon a time' whatever the data)
    from llmkit.data.dataset import open_dataset
    from llmkit.registry import Registry

    first = open_dataset(Registry.for_workspace(lm_workspace), "tiny").records("val")[0]["text"]
    hint = resumed.stdout.strip().splitlines()[-1]
    assert hint.startswith("next: llmkit generate ") and " ".join(first.split()[:3]) in hint, hint
    resumed_losses = _losses(run_dir)
    assert sorted(resumed_losses) == list(range(1, 101))
    # the steps redone after the checkpoint are in the file once: their first try went when the run resumed
    trained = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert trained == list(range(1, 101))
    states = {r["id"]: r["state"] for r in json.loads(cli_here("ls", "runs", "--json", workspace=lm_workspace).stdout)}
    assert states[run_id] == "finished"
    for step in range(1, 101):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-7), f"step {step}"


_WRITER = """
import sys, time, torch
from pathlib import Path
from llmkit.train.checkpoint import save_checkpoint
run = Path(sys.argv[1])
model = torch.nn.Linear(4, 4)
save_checkpoint(run, 10, model, {"step": 10, "note": torch.zeros(1)}, keep=3)
(run / "ready").write_text("1")
big = {"step": 20, "blob": torch.randn(60_000_000)}  # ~240 MB: slow enough to be killed mid-write
save_checkpoint(run, 20, model, big, keep=3)
(run / "finished").write_text("1")
"""


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_usable(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run)])
    deadline = time.time() + 120
    while not (run / "ready").exists() and time.time() < deadline:
        time.sleep(0.01)
    # Wait until the second checkpoint's temporary folder appears, then kill in the middle of it.
    while time.time() < deadline and not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir()):
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "finished").exists(), "the write completed before the kill; the test proved nothing"
    checkpoints = list_checkpoints(run)
    assert [c.name for c in checkpoints] == ["step-000010"]
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    state = load_checkpoint(checkpoints[0], torch.nn.Linear(4, 4))
    assert state["step"] == 10


def test_only_the_last_k_checkpoints_are_kept(tmp_path: Path):
    model = torch.nn.Linear(2, 2)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000030", "step-000040"]


def test_sigterm_writes_a_checkpoint_at_the_current_step_and_says_how_to_resume(lm_workspace: Path, tmp_path: Path):
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace)}
    config = write_tiny_config(tmp_path / "tiny.yaml")
    cmd = _train_cmd(config, "terminated")
    cmd[cmd.index("--max-steps") + 1] = "100000"
    cmd[cmd.index("--checkpoint-every") + 1] = "100000"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline and run_dir is None:
        runs = [p for p in (lm_workspace / "runs").iterdir() if p.name.startswith("terminated-")]
        if runs and (runs[0] / "metrics.jsonl").exists() and max(_losses(runs[0]), default=0) >= 5:
            run_dir = runs[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert run_dir is not None
    assert proc.returncode == 130, stderr[-2000:]
    assert "--resume" in stdout + stderr
    step = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    assert step == max(_losses(run_dir)) >= 5
    from llmkit.registry import Registry
    from llmkit.registry.run_state import run_state

    metrics = Registry.for_workspace(lm_workspace).get(json.loads((run_dir / "run.json").read_text())["id"]).metrics
    assert run_state(metrics) == "stopped" and metrics["note"].startswith(f"stopped at step {step}")


def test_a_run_saved_under_the_old_section_name_resumes_and_a_run_of_another_stage_is_refused(tmp_path: Path):
    import yaml

    from llmkit.config import PretrainConfig, SftConfig
    from llmkit.errors import UserError
    from llmkit.train.checkpoint import resume_run

    old = tmp_path / "old-run"
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump({"train": PretrainConfig(data="tiny", lr=0.004).model_dump()}))
    (old / "run.json").write_text(json.dumps({"id": "run-old"}))
    saved, path, run_id = resume_run(PretrainConfig(resume=str(old)), "pretrain", registry=None)
    assert (saved.data, saved.lr, path, run_id) == ("tiny", 0.004, old, "run-old")
    with pytest.raises(UserError, match=r"sft.resume = '.*old-run': that run is a 'pretrain' run, not sft"):
        resume_run(SftConfig(resume=str(old)), "sft", registry=None)
    assert resume_run(PretrainConfig(), "pretrain", registry=None) == (PretrainConfig(), None, None)


def test_a_row_cut_by_a_kill_is_dropped_and_the_resumed_run_appends_clean_rows(tmp_path: Path):
    file = tmp_path / "metrics.jsonl"
    file.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')  # killed mid-write
    assert read_metrics(file) == [{"step": 1, "loss": 2.5}]
    log = MetricsLog(file)
    log.write(step=2, loss=2.25)
    assert [(r["step"], r["loss"]) for r in read_metrics(file)] == [(1, 2.5), (2, 2.25)]
    assert file.read_text().count("\n") == 2


def test_a_resumed_run_forgets_the_rows_after_its_checkpoint(tmp_path: Path):
    file = tmp_path / "metrics.jsonl"
    file.write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 10}) + "\n" for s in range(1, 8))
                    + json.dumps({"step": 5, "val_loss": 2.6}) + "\n")
    MetricsLog(file).forget_after(5)
    assert [(r["step"], "val_loss" in r) for r in read_metrics(file)] == [(1, False), (2, False), (3, False), (4, False),
                                                                         (5, False), (5, True)]


def test_a_run_resumes_by_the_name_of_its_folder(lm_workspace: Path):
    # runs/<name>-<id6> is what a user sees in the workspace: it was refused ("no run with that id, name or folder")
    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.train import pretrain
    from llmkit.workspace import Workspace
    from tests.conftest import tiny_config

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    same = {"eval_every": 2, "checkpoint_every": 2}
    first = pretrain(tiny_config(name="by-folder", max_steps=4, **same), ws, registry)
    run = registry.get(first.lineage["run"]["id"], "run")
    more = pretrain(tiny_config(resume=Path(run.path).name, max_steps=6, **same), ws, registry)
    assert more.lineage["run"]["id"] == run.id and more.lineage["metrics"]["steps"] == 6
    with pytest.raises(UserError, match=r"no run with that id, name, folder or folder name"):
        pretrain(tiny_config(resume="../runs", max_steps=8, **same), ws, registry)  # a path is a path, not a name


def test_continuing_a_finished_run_keeps_the_version_it_made_and_a_finished_one_says_there_is_nothing_to_do(
        lm_workspace: Path, tmp_path: Path):
    """A resumed run wrote its model into the folder of the version it had registered (v1's record then described
    8-step weights as its 4-step ones), and resuming a finished run registered the same weights again."""
    import hashlib

    from llmkit.config import SftConfig
    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.train import pretrain
    from llmkit.train.checkpoint import resume_run
    from llmkit.workspace import Workspace
    from tests.conftest import tiny_config

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    first = pretrain(tiny_config(name="continued", max_steps=4, eval_every=2, checkpoint_every=2), ws, registry)
    weights = first.path / "model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    run = first.lineage["run"]["id"]
    # a value that differs from the run's own would be ignored: refused, naming it (a new --lr went unheeded)
    with pytest.raises(UserError, match=r"pretrain.resume = '.*': a resumed run keeps the config it started with, and "
                                        r"checkpoint_every 10 \(the run's: 2\), eval_every 10 \(the run's: 2\), lr 0.01 "
                                        r"\(the run's: 0.003\) differ; drop them \(only max_steps may grow\)"):
        pretrain(tiny_config(resume=run, max_steps=6, lr=0.01), ws, registry)
    same = {"eval_every": 2, "checkpoint_every": 2}  # the command it started with, plus --resume and more steps
    more = pretrain(tiny_config(resume=run, max_steps=6, **same), ws, registry)
    assert more.path != first.path and more.version == first.version + 1 and more.lineage["metrics"]["steps"] == 6
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before  # v1 is what v1's record says
    versions = len(registry.list("model"))
    with pytest.raises(UserError, match=rf"run {run} already trained 6 steps and its model holds them: nothing to "
                                        r"train; pass a --max-steps above 6"):
        pretrain(tiny_config(resume=run, max_steps=6, **same), ws, registry)
    assert len(registry.list("model")) == versions
    # a refused resume leaves the run as it was (it read "failed" after this mistake)
    from llmkit.registry.run_state import run_state

    assert run_state(registry.get(run).metrics) == "finished"
    # a smaller --max-steps went unheeded (the run trained on to its own): refused, saying why
    with pytest.raises(UserError, match=r"max_steps 3 is below the run's 6, and a resumed run keeps its schedule"):
        pretrain(tiny_config(resume=run, max_steps=3, **same), ws, registry)
    # every stage's resume takes a larger --max-steps (sft ignored it and registered the same adapter again)
    import yaml

    folder = tmp_path / "sft-run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"sft": SftConfig(data="chats", max_steps=2).model_dump()}))
    (folder / "run.json").write_text(json.dumps({"id": "run-sft"}))
    assert resume_run(SftConfig(resume=str(folder), max_steps=4), "sft", None)[0].max_steps == 4
    assert resume_run(SftConfig(resume=str(folder)), "sft", None)[0].max_steps == 2


@pytest.mark.parametrize("override, says", [
    ({"num_hidden_layers": 0}, "pretrain.model.num_hidden_layers = 0: it must be a whole number of at least 1"),
    ({"num_attention_heads": 0}, "pretrain.model.num_attention_heads = 0"),  # was a ZeroDivisionError, exit 1
    ({"vocab_size": 10}, "pretrain.model.vocab_size = 10: the dataset's tokenizer has"),  # an IndexError after step 0
])
def test_a_model_that_cannot_be_built_is_refused_before_a_run_is_registered(lm_workspace: Path, override, says):
    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.train import pretrain
    from llmkit.workspace import Workspace
    from tests.conftest import TINY, tiny_config

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    runs = len(registry.list("run"))
    with pytest.raises(UserError, match=re.escape(says)):
        pretrain(tiny_config(name="unbuildable", model={**TINY, **override}, max_steps=2), ws, registry)
    assert len(registry.list("run")) == runs  # no half-made run left registered


def test_a_run_killed_after_its_last_checkpoint_but_before_its_model_is_finished_by_resume(lm_workspace: Path):
    """The last checkpoint is written inside the loop, the model after it: a kill between the two left a run whose
    --resume said "nothing to train" (and marked it failed), and no model of its trained weights."""
    import shutil

    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.registry.run_state import run_state, running_mark
    from llmkit.train import pretrain
    from llmkit.workspace import Workspace
    from tests.conftest import tiny_config

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    made = pretrain(tiny_config(name="cut-short", max_steps=4, eval_every=2, checkpoint_every=2), ws, registry)
    run = made.lineage["run"]["id"]
    registry.remove(made.id)  # as if killed before the model was written: the checkpoint at step 4 is all there is
    shutil.rmtree(made.path)
    registry.update_metrics(run, running_mark())  # as if still training in a live process: two would interleave
    with pytest.raises(UserError, match=rf"run {run} is still running \(process {os.getpid()} on"):
        pretrain(tiny_config(resume=run, max_steps=4, eval_every=2, checkpoint_every=2), ws, registry)
    registry.update_metrics(run, {**running_mark(), "pid": 999999})
    assert run_state(registry.get(run).metrics) == "died"
    finished = pretrain(tiny_config(resume=run, max_steps=4, eval_every=2, checkpoint_every=2), ws, registry)
    assert finished.lineage["metrics"]["steps"] == 4 and (finished.path / "model.safetensors").exists()
    assert run_state(registry.get(run).metrics) == "finished"


def test_a_finished_run_without_a_checkpoint_is_not_retrained_under_its_name(lm_workspace: Path, tmp_path: Path):
    # it trained from step 0 again, and a second time wrote into the first retrain's model folder
    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.train import pretrain
    from llmkit.train.checkpoint import run_model_folder
    from llmkit.workspace import Workspace
    from tests.conftest import tiny_config

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    made = pretrain(tiny_config(name="no-ckpt", max_steps=2, eval_every=2, checkpoint_every=100), ws, registry)
    run = made.lineage["run"]["id"]
    import shutil

    # the end of a run is a checkpoint now (tests/train/test_resume_finished.py); an older llmkit left none
    shutil.rmtree(Path(made.lineage["run"]["path"]) / "checkpoints")
    with pytest.raises(UserError, match=rf"run {run} finished without a checkpoint to resume from"):
        pretrain(tiny_config(resume=run, max_steps=2, eval_every=2, checkpoint_every=100), ws, registry)
    first = run_model_folder(ws, "no-ckpt", run, 2)  # the run's own folder exists: the step folder
    first.mkdir()
    assert run_model_folder(ws, "no-ckpt", run, 2) not in (first, made.path)
