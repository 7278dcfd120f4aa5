"""Worker processes die with their parent: kill -9 of a real `llmkit data prepare` leaves none behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

DEADLINE = 30.0  # generous: a loaded CI machine; the workers normally go within a second


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        found.update(int(c) for c in children)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for pid 1, which in a container may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_workers(proc: subprocess.Popen, seconds: float = 120) -> set[int]:
    """The child processes of `proc` once there are two of them (fewer if it ended or the time ran out)."""
    workers: set[int] = set()
    end = time.monotonic() + seconds
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < end:
        workers = _children(proc.pid)
        time.sleep(0.05)
    return workers


def _big_text(path: Path, mb: int) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    with open(path, "w") as fh:
        while fh.tell() < mb << 20:
            fh.write("\n\n".join(" ".join(rng.choices(words, k=120)) for _ in range(200)) + "\n\n")


def test_kill_9_of_prepare_takes_its_workers_with_it(tmp_path: Path):
    if not Path("/proc/self/task").exists():
        import pytest

        pytest.skip("needs /proc to find the worker processes")
    data = tmp_path / "big.txt"
    _big_text(data, 24)
    env = {**os.environ, "LLMKIT_HOME": str(tmp_path / "ws"), "LLMKIT_DATA_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "data", "prepare", str(data), "--name", "big",
                             "--task", "lm", "--tokenizer", "char"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        workers = _wait_for_workers(proc)
        assert len(workers) >= 2, f"prepare ended before its workers were seen: {proc.returncode} {proc.stderr.read()[-500:]}"
        time.sleep(0.5)  # the workers are busy on chunks (or waiting for the next one)
        _kill_parent_and_check(proc, workers)
    finally:
        _clean_up(proc, workers)


POOL_OFF_THE_MAIN_THREAD = """
import threading, time
from llmkit.data.workers import Workers

def run():
    with Workers(2) as workers:
        for _ in workers.map(time.sleep, [0.2] * 10_000):
            pass

thread = threading.Thread(target=run)
thread.start()
thread.join()
"""


def test_workers_of_a_pool_made_off_the_main_thread_also_die_with_the_parent():
    # No parent-death signal there (it would fire when the forking thread ends): the watcher thread ends them.
    proc = subprocess.Popen([sys.executable, "-c", POOL_OFF_THE_MAIN_THREAD])
    workers: set[int] = set()
    try:
        workers = _wait_for_workers(proc, 60)
        assert len(workers) >= 2
        _kill_parent_and_check(proc, workers)
    finally:
        _clean_up(proc, workers)


def _kill_parent_and_check(proc: subprocess.Popen, workers: set[int]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end = time.monotonic() + DEADLINE
    while any(_alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    survivors = [w for w in workers if _alive(w)]
    assert not survivors, f"workers {survivors} outlived their killed parent"


def _clean_up(proc: subprocess.Popen, workers: set[int]) -> None:
    proc.kill()
    for w in workers:
        if _alive(w):
            os.kill(w, signal.SIGKILL)


def test_ctrl_c_of_prepare_stops_it_and_its_workers_in_one_line(tmp_path: Path):
    """A terminal's Ctrl-C goes to the whole process group. The workers printed their own KeyboardInterrupt
    tracebacks, and the parent could hang for ever in the pool's shutdown (1 try in 5 on a loaded machine)."""
    data = tmp_path / "big.txt"
    _big_text(data, 40)  # ~4 s of work on two workers: the signal lands while they are busy
    env = {**os.environ, "LLMKIT_HOME": str(tmp_path / "ws"), "LLMKIT_DATA_WORKERS": "2"}
    for attempt in range(3):  # the moment the signal lands varies: in pass 1, in pass 2, between chunks
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "data", "prepare", str(data), "--name", f"big{attempt}",
                                 "--task", "lm", "--tokenizer", "char"], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        workers: set[int] = set()
        try:
            workers = _wait_for_workers(proc)
            assert len(workers) >= 2, f"prepare ended before its workers were seen: {proc.returncode}"
            time.sleep(0.1 + 0.4 * attempt)
            os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: to the parent and its workers at once
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 130, stderr
            assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted", stderr
            end = time.monotonic() + DEADLINE
            while any(_alive(w) for w in workers) and time.monotonic() < end:
                time.sleep(0.1)
            assert not [w for w in workers if _alive(w)], "workers outlived the interrupted prepare"
        finally:
            _clean_up(proc, workers)


def _sigint_ignored(_job) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_workers_leave_ctrl_c_to_their_parent():
    # a worker that took the terminal's SIGINT died mid-chunk: a broken pool, its own traceback, and a parent that
    # could wait for its result for ever
    from llmkit.data.workers import Workers

    with Workers(2) as workers:
        assert list(workers.map(_sigint_ignored, range(4))) == [True] * 4
