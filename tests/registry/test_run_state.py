"""A run's state: how a trainer's run ended, written by `tracks_runs` on a real registry, and a run whose process
is gone read as died (a real process, killed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.config import PretrainConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.registry.run_state import _started_ticks, run_state, running_mark
from llmkit.train.checkpoint import TrainingInterrupted, save_checkpoint, start_run, tracks_runs
from llmkit.workspace import Workspace


def _runs(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    return ws, Registry.for_workspace(ws.root)


@pytest.mark.parametrize(("ending", "state", "error"), [
    (None, "finished", None),
    (TrainingInterrupted(3, "r", "pretrain"), "stopped", "stopped at step 3; continue with: llmkit train pretrain --resume r"),
    (RuntimeError("out of memory\nmore lines"), "failed", "RuntimeError: out of memory"),
    (UserError("pretrain.lr must be positive"), "failed", "pretrain.lr must be positive"),  # a run with a checkpoint
])
def test_a_tracked_trainer_writes_how_its_run_ended(tmp_path: Path, ending, state, error):
    ws, registry = _runs(tmp_path)

    @tracks_runs
    def trainer():
        run_dir, run_id = start_run(ws, registry, "r", "pretrain", PretrainConfig(data="d"), [])
        assert run_state(registry.get(run_id).metrics) == "running"  # this process runs it
        save_checkpoint(run_dir, 1, __import__("torch").nn.Linear(2, 2), {"step": 1}, keep=1)
        if ending is not None:
            raise ending
        return run_id

    if ending is None:
        run_id = trainer()
    else:
        with pytest.raises(type(ending)):
            trainer()
        (rec,) = registry.list("run")
        run_id = rec.id
    metrics = registry.get(run_id).metrics
    assert run_state(metrics) == state and metrics.get("error" if state == "failed" else "note") == error


def test_a_user_mistake_before_the_first_checkpoint_leaves_no_run(tmp_path: Path):
    ws, registry = _runs(tmp_path)

    @tracks_runs
    def trainer():
        start_run(ws, registry, "r", "pretrain", PretrainConfig(data="d"), [])
        raise UserError("a mistake")

    with pytest.raises(UserError):
        trainer()
    assert registry.list("run") == [] and list((ws.root / "runs").iterdir()) == []


def test_a_nested_trainer_leaves_the_state_to_the_outer_one(tmp_path: Path):
    ws, registry = _runs(tmp_path)
    seen = {}

    @tracks_runs
    def inner():
        return start_run(ws, registry, "r", "sft", PretrainConfig(data="d"), [])[1]

    @tracks_runs
    def outer():
        run_id = inner()
        seen["after inner"] = run_state(registry.get(run_id).metrics)  # the model is not registered yet
        return run_id

    run_id = outer()
    assert seen["after inner"] == "running" and run_state(registry.get(run_id).metrics) == "finished"


def test_a_running_run_whose_process_is_gone_died():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mark = {**running_mark(), "pid": proc.pid, "process_started": _started_ticks(proc.pid)}
    assert run_state(mark) == "running"
    proc.kill()
    proc.wait()
    assert run_state(mark) == "died"


def test_a_pid_given_to_a_later_process_does_not_keep_a_run_alive():
    here = running_mark()
    assert run_state(here) == "running"
    if here["process_started"] is None:
        pytest.skip("no /proc here: a run is read by its pid alone")
    assert run_state({**here, "process_started": here["process_started"] - 1}) == "died"


def test_a_run_on_another_machine_stays_running_and_old_runs_have_no_state():
    assert run_state({**running_mark(), "host": socket.gethostname() + "-elsewhere", "pid": 999999}) == "running"
    # another container with this host name sees other pids
    assert run_state({**running_mark(), "pid_namespace": "pid:[1]", "pid": 999999}) == "running"
    assert run_state({**running_mark(), "pid": 999999}) == "died"
    assert run_state({"val_loss": 1.0}) is None


def test_a_process_is_named_by_its_start_time_since_boot():
    # field 22 of /proc/PID/stat: a neighbouring field (the thread count, the memory size) would name another process
    # as this one, or this one as another
    if _started_ticks(__import__("os").getpid()) is None:
        pytest.skip("no /proc here")
    import os
    import time

    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    before = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = boot + _started_ticks(proc.pid) / os.sysconf("SC_CLK_TCK")
    finally:
        proc.kill()
        proc.wait()
    assert before - 2 < started < time.time() + 2
