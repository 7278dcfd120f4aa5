"""eval/speed.OthersCpu: the share of the machine other processes took during a timing, and the warning it gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from llmkit.eval.speed import BUSY_SHARE, OthersCpu, busy_warning

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")


def test_other_processes_spinning_on_every_core_are_seen():
    cores = os.cpu_count() or 1
    spinners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
                for _ in range(cores)]
    try:
        time.sleep(0.5)  # started
        with OthersCpu() as others:
            time.sleep(1.0)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert others.share is not None and others.share > 0.6
    assert busy_warning(others.share, "the timing").startswith(f"other processes used {others.share:.0%}")


def test_this_process_own_work_is_not_counted():
    with OthersCpu() as before:
        time.sleep(0.5)
    if before.share is None or before.share > 0.1:
        pytest.skip(f"other processes already use {before.share} of the CPU: this process's share cannot be told apart")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        a = torch.randn(512, 512)
        with OthersCpu() as others:
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                a = (a @ a).clamp_(-1, 1)  # every core busy, all of it this process
    finally:
        torch.set_num_threads(threads)
    assert others.share is not None and others.share < 0.5
    assert busy_warning(BUSY_SHARE, "x") is None and busy_warning(None, "x") is None
