"""A throw-away PostgreSQL cluster for the test session, started from the installed binaries.

The same recipe as `.ci/run`: initdb with trust auth, listening on 127.0.0.1 only on a free port, its
socket in the cluster's own temp folder, durability off (throw-away data; keeps CREATE DATABASE per test
fast). As root, initdb and postgres refuse to run, so they run as the `postgres` user.

`start()` returns a running `Cluster` or raises `Unavailable` with one plain sentence saying why.
`Cluster.stop()` stops the server and deletes the folder; a watchdog process does the same if this
process dies without calling it (SIGKILL, a crash), so no cluster outlives the test run.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class Unavailable(Exception):
    """No throw-away PostgreSQL can be started here; the message says why in one sentence."""


def find_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if os.access(p, os.X_OK)]
    return max(found, key=lambda p: _version_key(p.parent.name), default=None)


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs beside the test process with our end of a pipe on its stdin: EOF means the test process is gone,
# however it went, and then the cluster is stopped (if still running) and its folder deleted.
WATCHDOG = r"""
import os, shutil, subprocess, sys
sys.stdin.buffer.read()
pg_ctl, data, folder, *as_pg = sys.argv[1:]
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run([*as_pg, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, cwd="/")
shutil.rmtree(folder, ignore_errors=True)
"""


@dataclass
class Cluster:
    url: str
    folder: Path
    bin: Path
    as_pg: list[str]
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run(self.as_pg, [self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"], timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._watchdog is not None:  # nothing left for it to do: closing its stdin lets it exit
            self._watchdog.stdin.close()
            self._watchdog.wait(timeout=30)
            self._watchdog = None


def _run(as_pg: list[str], argv: list, timeout: float) -> subprocess.CompletedProcess:
    # cwd="/": as the postgres user, the current folder (the repo) may be unreadable.
    return subprocess.run([*as_pg, *map(str, argv)], capture_output=True, text=True, timeout=timeout, cwd="/")


def _as_pg_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root, initdb must run as the 'postgres' user, and runuser is not installed")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root, initdb must run as the 'postgres' user, and there is none "
                          "(create it: useradd --system postgres)") from None
    return [runuser, "-u", "postgres", "--"]


def _tail(path: Path, chars: int = 300) -> str:
    try:
        return " ".join(path.read_text(errors="replace").split())[-chars:]
    except OSError:
        return "(no log)"


def start() -> Cluster:
    pg_bin = find_bin()
    if pg_bin is None:
        raise Unavailable("no PostgreSQL binaries at /usr/lib/postgresql/*/bin/initdb "
                          "(apt-get install postgresql, or set LLMKIT_TEST_PG_URL)")
    as_pg = _as_pg_prefix()
    # The system temp folder, not pytest's: as root, pytest's is private to root and postgres must reach it.
    folder = Path(tempfile.mkdtemp(prefix="llmkit-test-pg-"))
    if as_pg:
        shutil.chown(folder, "postgres")
    folder.chmod(0o700)
    cluster = Cluster(url="", folder=folder, bin=pg_bin, as_pg=as_pg)
    cluster._watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(pg_bin / "pg_ctl"), str(cluster.data), str(folder), *as_pg],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
    try:
        _init_and_start(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _init_and_start(cluster: Cluster) -> None:
    pg_bin, data, folder = cluster.bin, cluster.data, cluster.folder
    init = _run(cluster.as_pg, [pg_bin / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                                "--no-sync"], timeout=120)
    if init.returncode != 0:
        raise Unavailable(f"initdb failed: {' '.join((init.stderr or init.stdout).split())[-300:]}")
    log = folder / "server.log"
    for _attempt in range(3):  # the free port may be taken between asking for it and binding it
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        started = _run(cluster.as_pg, [pg_bin / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options,
                                       "start"], timeout=90)
        if started.returncode == 0:
            break
        if "could not bind" not in _tail(log, 2000):
            raise Unavailable(f"PostgreSQL did not start: {_tail(log)}")
    else:
        raise Unavailable(f"PostgreSQL found no free port in 3 tries: {_tail(log)}")
    cluster.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    _wait_ready(pg_bin, port, log)


def _wait_ready(pg_bin: Path, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        ready = subprocess.run([pg_bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                               capture_output=True, timeout=30)
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"PostgreSQL started but does not accept connections: {_tail(log)}")
        time.sleep(0.2)
