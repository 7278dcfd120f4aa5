"""A training run's state, as MLflow and W&B users read one: running, finished, stopped, failed (or pruned, for
a tune trial), kept in the run record's metrics beside the process that runs it.

A process killed outright (kill -9, the OOM killer, a power cut) writes nothing more, so its run would say
"running" for ever; `run_state` reads such a run as "died" when its process is gone from this machine. The
process is named by its pid and its start time (`/proc`), so a pid the system gave to a later process does not
keep a dead run alive. A run on another machine stays "running" (nothing here can tell); `ls runs` says where.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

RUNNING, FINISHED, STOPPED, FAILED, PRUNED, DIED = "running", "finished", "stopped", "failed", "pruned", "died"
# every key a state mark writes (running_mark, ended_mark)
STATE_KEYS = ("state", "pid", "host", "process_started", "pid_namespace", "state_since", "error", "note")


def _started_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux's /proc/PID/stat field 22), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])  # the name in parentheses may hold spaces


def _pid_namespace() -> str | None:
    """Which pid namespace this process sees (containers sharing a host name, `--network host`, each have their own:
    a pid from another one says nothing here)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def running_mark() -> dict[str, Any]:
    """What a run records when it starts (or resumes): its state and the process running it."""
    return {"state": RUNNING, "pid": os.getpid(), "host": socket.gethostname(), "process_started": _started_ticks(os.getpid()),
            "pid_namespace": _pid_namespace(), "state_since": time.time()}


def ended_mark(state: str, why: str | None = None) -> dict[str, Any]:
    """The run's end: `why` is the error of a failed run ("error"), how to go on for a stopped one ("note")."""
    mark: dict[str, Any] = {"state": state, "state_since": time.time(), "pid": None}
    if why is not None:
        mark["error" if state == FAILED else "note"] = why
    return mark


def here(metrics: dict[str, Any]) -> bool:
    """The run's process is one this machine can see (same host name, same pid namespace)."""
    return metrics.get("host") == socket.gethostname() and metrics.get("pid_namespace") == _pid_namespace()


def run_state(metrics: dict[str, Any]) -> str | None:
    """The state of a run with these metrics; None for a run recorded before runs kept one."""
    state = metrics.get("state")
    if state != RUNNING or not metrics.get("pid") or not here(metrics):
        return state
    pid = int(metrics["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return DIED
    except PermissionError:  # alive, another user's
        pass
    started = metrics.get("process_started")
    now = _started_ticks(pid)
    return DIED if started is not None and now is not None and now != started else RUNNING
