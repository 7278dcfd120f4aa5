"""Worker processes for `prepare` and the chunks of work they get.

The per-record work of both passes is a pure function of the record, so it runs in worker processes,
chunks in order and a bounded number in flight; every decision that depends on earlier records stays
in the calling process. Pass 1 sends records, pass 2 only byte ranges of a records file.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

PARALLEL_MIN_BYTES = 4_000_000  # below this, starting workers costs more than it saves
CHUNK_CHARS = 256_000  # text per task sent to a worker


def worker_count(files: list[Path]) -> int:
    """LLMKIT_DATA_WORKERS if set, else one per CPU (at most 4) for inputs large enough to pay for them."""
    env = os.environ.get("LLMKIT_DATA_WORKERS")
    if env is not None and env.strip():
        if not env.strip().isdigit():
            raise UserError(f"LLMKIT_DATA_WORKERS = '{env}': use a whole number of processes (0 = none)")
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus < 2 or sum(p.stat().st_size for p in files) < PARALLEL_MIN_BYTES:
        return 0
    return min(cpus, 4)


class Workers:
    """An order-preserving map over worker processes with a bounded number of chunks in flight."""

    def __init__(self, n: int):
        self.n = n
        self.pool = None
        if n > 0:
            # fork starts in milliseconds and does not re-import the caller's __main__ (spawn would,
            # which breaks scripts without a main guard); the workers only compute.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            # Linux's parent-death signal fires when the *thread* that forked a worker ends; the pool forks
            # from the thread that submits, so it is only used when that is the main thread (which ends
            # with the process). The watcher thread covers the rest.
            on_main_thread = threading.current_thread() is threading.main_thread()
            self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method), initializer=_worker_init,
                                            initargs=(os.getpid(), on_main_thread))

    def map(self, fn: Callable, jobs: Iterable) -> Iterator:
        if self.pool is None:
            yield from map(fn, jobs)
            return
        pending: deque = deque()
        for job in jobs:
            pending.append(self.pool.submit(fn, job))
            if len(pending) > 2 * self.n:  # bounded: the input is never read far ahead of the output
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.pool is not None:
            # Leaving on an error or a Ctrl-C the results are not wanted: queued chunks are dropped and the workers
            # (which ignore SIGINT, see _worker_init) end after the chunk in hand. Killing them instead could cut a
            # result off mid-message, and the pool's manager thread then waits for its end for ever at exit.
            self.pool.shutdown(wait=exc_type is None, cancel_futures=True)


def _worker_init(parent_pid: int, parent_death_signal: bool) -> None:
    """Die with the parent, and keep malloc's freed blocks (see _keep_freed_memory).

    A worker whose parent is SIGKILLed would otherwise wait on the task pipe forever, re-parented and
    holding its memory (its siblings keep the pipe's write end open, so it never sees end-of-file).
    """
    # A terminal's Ctrl-C reaches the whole process group: the parent stops the work (and ends the workers); a
    # worker stopped mid-task broke the pool and printed its own KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_death_signal and sys.platform.startswith("linux"):
        _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="llmkit-parent-watch", daemon=True).start()
    _keep_freed_memory()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_parent_death_signal() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # SIGKILL: the worker holds nothing that needs cleaning up; its results go to a dead parent.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watcher thread still ends the worker


def _exit_when_orphaned(parent_pid: int, every: float = 0.5) -> None:
    # Portable fallback (and for pools forked off the main thread): re-parenting changes getppid().
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)


def _keep_freed_memory() -> None:
    """Let a worker's malloc keep the few MB it frees after every chunk instead of handing them back.

    A chunk allocates and frees numpy arrays and pickles of 0.1-4 MB. Under glibc's defaults each is a
    fresh mmap (or a heap trim and regrowth) whose pages the kernel faults in and zeroes again: that was
    0.5 of the workers' 3.3 CPU-seconds on the benchmark, as system time. glibc only; elsewhere a no-op.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: blocks below 4 MB come from the heap
    mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD: keep up to 8 MB of free heap


def chunks(items: Iterable, size_of: Callable[[Any], int]) -> Iterator[list]:
    """Lists of items of about CHUNK_CHARS in all (at most 4096 items)."""
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += size_of(item)
        if size >= CHUNK_CHARS or len(chunk) >= 4096:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def byte_ranges(path: Path, size: int = CHUNK_CHARS) -> Iterator[tuple[int, int]]:
    """(start, end) byte offsets of about `size` bytes each, cut after a newline."""
    with open(path, "rb") as fh:
        total = fh.seek(0, os.SEEK_END)
        start = 0
        while start < total:
            fh.seek(min(start + size, total) - 1)
            fh.readline()  # on to the end of the line that holds the last byte
            end = fh.tell()
            yield start, end
            start = end
