"""Ending a study cleanly, and local worker processes that never step on each other.

SIGINT or SIGTERM (Ctrl-C, `kill`, systemd, Kubernetes, a CI cancel) ends a study: the running trial stops at
its next step and is recorded failed, no new trial starts, the study's summary is written and the command
exits 130 or 143. Without this the training loop's own handler turned the signal into a failed trial and the
study went on with the next one (Optuna records an exception in the objective as a failed trial), so a tune
could only be stopped with SIGKILL. A second signal stops at once (KeyboardInterrupt).

`--workers N` processes get the parent's signal forwarded, and the kernel sends them SIGTERM when the
parent dies (PR_SET_PDEATHSIG), so a killed `llmkit tune` leaves no trial process behind.

Optuna hands an enqueued trial (the study's first, the config as given) to the first `ask()` with a row
lock that SQLite does not have: two local workers asking at once both ran it. Local workers take turns at
`ask()` through a file lock; processes on other machines share a PostgreSQL storage, whose row locks do this.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna


class StudyStopped(Exception):
    """Raised by a trial's watcher when a signal asked the study to end before the training loop saw it."""


class StopSignals:
    """SIGINT/SIGTERM set `signal` (and reach `children`); a second one raises KeyboardInterrupt.

    While a training loop runs it installs its own handler, which ends the run at the end of its step; the
    trial reads which signal that was from the loop's `TrainingInterrupted` and records it here."""

    def __init__(self, children: Iterable[subprocess.Popen] = ()):
        self.signal: int | None = None
        self.children = list(children)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (a test, an embedding app): leave signals alone
                pass
        return self

    def _handle(self, signum: int, _frame) -> None:
        first = self.signal is None
        self.signal = signum if first else self.signal
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)
        if not first:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent dies (Linux); if it died already, now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's forwarding alone
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class StudyFull(Exception):
    """Raised by a study's ask() (see asks_in_turn) when the study already holds the trials asked for."""


def asks_in_turn(study: optuna.Study, lock_file: Path, full: Callable[[], bool] | None = None) -> optuna.Study:
    """Make this process's `study.ask()` (which Optuna's optimize calls) take a file lock shared by the study's
    local workers: an enqueued trial is then popped by one of them. `full`, read under the lock, says the study
    holds its trials already: ask() raises StudyFull instead of starting one more (two workers that each counted
    3 of 4 before asking ran 5)."""
    ask = study.ask
    lock_file.parent.mkdir(parents=True, exist_ok=True)  # a process joining another machine's study has no folder yet

    def locked_ask(*args, **kwargs):
        with open(lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if full is not None and full():
                    raise StudyFull
                return ask(*args, **kwargs)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    study.ask = locked_ask  # type: ignore[method-assign]  # the instance's own: other studies keep Optuna's
    return study
