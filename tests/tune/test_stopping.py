"""Stopping a study: SIGTERM to `llmkit tune` (one process, or the parent of `--workers 2`) ends the running
trials as failed, starts no other, writes the study's summary and exits 143, with no worker left behind; local
workers pop an enqueued trial once (SQLite has no row lock for Optuna's pop)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from llmkit.config import DataConfig
from llmkit.data.pipeline import prepare
from llmkit.registry import Registry
from llmkit.tune.stopping import asks_in_turn
from llmkit.workspace import Workspace
from tests.conftest import write_tiny_config


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("tune-stop")
    (root / "s.txt").write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:30_000])
    prepare(DataConfig(inputs=[str(root / "s.txt")], name="tiny", task="lm", tokenizer="char", doc_split="blank-line",
                       splits={"val": 0.1, "test": 0.05}), Workspace.open(root), Registry.for_workspace(root))
    (root / "space.yaml").write_text("lr: {log-float: [1.0e-3, 1.0e-2]}\n")
    # trials that never end on their own: only the signal can stop them
    write_tiny_config(root / "long.yaml", max_steps=100_000, eval_every=1_000, checkpoint_every=100_000, batch_size=4,
                      context=32)
    return root


def _tune(root: Path, study: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmkit", "tune", "pretrain", "--data", "tiny", "--space",
                             str(root / "space.yaml"), "--config", str(root / "long.yaml"), "--trials", "6",
                             "--study", study, "--pruner", "none", "--json", *extra],
                            env={**os.environ, "LLMKIT_HOME": str(root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _running(root: Path, study: str, count: int, proc: subprocess.Popen, timeout: float = 240) -> list:
    """The study's trials once `count` of them are mid-run (their runs have made a step)."""
    url = Registry.for_workspace(root).url
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name=study, storage=url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # not created yet
            trials = []
        if sum("run_id" in t.user_attrs for t in trials) >= count:
            return trials
        time.sleep(0.3)
    raise AssertionError(f"no {count} running trials: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_the_study_writes_its_summary_and_exits_143(ws_root: Path, workers: int):
    study = f"stop{workers}"
    proc = _tune(ws_root, study, "--workers", str(workers))
    running = _running(ws_root, study, workers, proc)
    pids = {t.user_attrs["pid"] for t in running}
    plan = ws_root / "runs" / f"{study}-study" / "plan.json"
    if workers > 1:  # the database URLs (passwords) reach the workers by their environment, not the workspace
        assert {k: json.loads(plan.read_text())[k] for k in ("storage", "registry_url")} == {"storage": "", "registry_url": ""}
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert time.time() - started < 60  # it did not run the next trials (each of 100,000 steps)
    assert "Traceback" not in out + err and "--resume" not in out + err
    result = json.loads(out)
    assert result["stopped_by"] == "SIGTERM" and result["states"]["fail"] == workers and result["states"]["complete"] == 0
    trials = optuna.load_study(study_name=study, storage=Registry.for_workspace(ws_root).url).get_trials()
    assert len(trials) == workers and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    registry = Registry.for_workspace(ws_root)
    runs = [r for rel, r in registry.children(result["id"]) if rel == "trial_of"]
    assert sorted(r.metrics["tune_note"] for r in runs) == ["stopped by SIGTERM"] * workers
    deadline = time.time() + 10
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)  # no worker outlived the parent
    assert not plan.exists()


def test_a_worker_dies_with_its_parent(tmp_path: Path):
    """SIGKILL to `llmkit tune --workers 2` forwards nothing: the kernel sends each worker SIGTERM when its parent dies
    (die_with_parent), which ends its trial as a signal does. Here a parent that dies at once, and its child."""
    child = (f"import os, signal, sys, time; from llmkit.tune.stopping import die_with_parent; "
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(tmp_path / 'got')!r}, 'w').write('SIGTERM'), "
             f"sys.exit(0))); die_with_parent(int(sys.argv[1])); open({str(tmp_path / 'ready')!r}, 'w').close(); "
             f"time.sleep(60)")
    parent = (f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())], "
              f"stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
              f"print(p.pid, flush=True); "
              f"[time.sleep(0.05) for _ in range(400) if not os.path.exists({str(tmp_path / 'ready')!r})]; os._exit(0)")
    proc = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    orphan = int(proc.stdout.split()[0])
    deadline = time.time() + 20
    while _alive(orphan) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(orphan) and (tmp_path / "got").read_text() == "SIGTERM", proc.stderr


def test_local_workers_pop_an_enqueued_trial_once(tmp_path: Path):
    """Optuna pops a waiting trial with SELECT ... FOR UPDATE SKIP LOCKED, which SQLite ignores: two processes
    asking at once could both get it. Taking turns at ask(), each enqueued trial goes to one asker."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=url)
    studies = [asks_in_turn(optuna.load_study(study_name="s", storage=url), tmp_path / "ask.lock") for _ in range(4)]
    for round_ in range(10):
        studies[0].enqueue_trial({"x": float(round_)})
        barrier, got = threading.Barrier(len(studies)), []

        def ask(study, barrier=barrier, got=got):
            barrier.wait()
            trial = study.ask()
            got.append((trial.number, trial.suggest_float("x", -1.0, 100.0)))
            study.tell(trial, 0.0)

        threads = [threading.Thread(target=ask, args=(s,)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [x for _, x in got].count(float(round_)) == 1, got
        assert len({n for n, _ in got}) == len(studies)


def test_local_workers_stop_at_the_studys_total_together(tmp_path: Path):
    """Each worker counted the study's trials, then asked: two that both counted 3 of 4 ran 5. Counted under the
    ask lock, the last trial goes to one of them and the others stop (StudyFull)."""
    from llmkit.tune.stopping import StudyFull
    from llmkit.tune.study import trial_count

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=url)
    total, workers = 5, 4
    studies = []
    for _ in range(workers):
        study = optuna.load_study(study_name="s", storage=url)
        studies.append(asks_in_turn(study, tmp_path / "ask.lock", full=lambda study=study: trial_count(study) >= total))
    barrier = threading.Barrier(workers)

    def work(study):
        while trial_count(study) < total:  # run_trials' own check, before each trial
            barrier.wait(timeout=30)  # all at once: each sees the same count
            try:
                trial = study.ask()
            except StudyFull:
                barrier.abort()  # the others may still wait for this one
                return
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a trial that failed at once

    threads = [threading.Thread(target=lambda s=s: _quiet(work, s)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(studies[0].get_trials()) == total


def _quiet(fn, *args):
    try:
        fn(*args)
    except threading.BrokenBarrierError:  # a worker that found the study full left the others' barrier
        pass
