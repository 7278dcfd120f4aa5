"""`--lean-memory`: with glibc's mmap threshold fixed, freed large blocks leave the process at once; every training
run's `map_large_blocks`, the same for blocks of 4 MiB and more; and `release_freed`, what every long training step
ends with: the heap's holes handed back without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmkit

ENV = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | {
    "LLMKIT_MEMORY_PY": str(Path(llmkit.__file__).parent / "train" / "memory.py")}

PROBE = r"""
import ctypes, ctypes.util, importlib.util, os, sys
# train/memory.py alone, not through llmkit.train (whose trainers import torch: 2 s a process)
spec = importlib.util.spec_from_file_location("memory", os.environ["LLMKIT_MEMORY_PY"])
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
lean_allocator, map_large_blocks, release_freed = memory.lean_allocator, memory.map_large_blocks, memory.release_freed
if sys.argv[1].startswith("lean"):
    assert lean_allocator()
if sys.argv[1].endswith("large"):
    assert map_large_blocks()
size = int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 2 << 20
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
big = libc.malloc(8 << 20); ctypes.memset(big, 1, 8 << 20); libc.free(big)  # raises glibc's adaptive threshold
blocks = [libc.malloc(size) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, size)
before = rss()
for b in blocks[::2]:  # every other block: holes in the heap, nothing to trim at its top
    libc.free(b)
if sys.argv[1] == "trim":
    assert release_freed()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_lean_memory_returns_freed_blocks_that_the_default_allocator_keeps():
    def released(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=ENV)
        return int(out.stdout.strip())

    freed = 32 * (2 << 20)
    assert released("lean") >= 0.9 * freed     # each block was its own mapping, unmapped when freed
    assert released("default") < 0.1 * freed  # the heap keeps them resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_training_run_maps_blocks_of_4_mib_and_more_and_keeps_a_lower_threshold_it_was_given():
    def released(mode: str, mib: int) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode, str(mib)], capture_output=True, text=True, check=True,
                             env=ENV)
        return int(out.stdout.strip()) / (32 * (mib << 20))

    assert released("default", 5) < 0.1  # glibc's adaptive threshold (8 MiB after the first free) keeps them
    assert released("large", 5) >= 0.9  # 5 MiB blocks: their own mappings
    assert released("large", 2) < 0.1  # 2 MiB blocks stay on the heap
    assert released("lean+large", 2) >= 0.9  # --lean-memory's 256 KiB stands


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_release_freed_hands_back_the_holes_the_default_allocator_keeps():
    out = subprocess.run([sys.executable, "-c", PROBE, "trim"], capture_output=True, text=True, check=True, env=ENV)
    assert int(out.stdout.strip()) >= 0.9 * 32 * (2 << 20)  # every freed block's pages, though none was at the top


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_releaser_keeps_releasing_only_while_a_release_costs_at_most_a_tenth_of_a_step():
    from llmkit.train.memory import RELEASE_AFTER_STEP_S, RELEASE_MAX_SHARE, Releaser, fault_seconds_per_byte

    assert fault_seconds_per_byte() > 0  # a fresh page costs something here beyond writing it
    releaser = Releaser()
    assert not releaser.after_step(RELEASE_AFTER_STEP_S / 2) and releaser.cost_s is None  # a short step: never
    assert releaser.after_step(RELEASE_AFTER_STEP_S)  # the first long step releases, which measures the cost
    assert releaser.cost_s is not None and releaser.cost_s > 0 and releaser.released == 1
    releaser.cost_s = 0.3  # e.g. 0.1 s of trim and ~0.3 GB refaulted at 0.65 s/GiB
    assert not releaser.after_step(0.3 / RELEASE_MAX_SHARE * 0.9)  # it would cost more than a tenth of this step
    assert releaser.released == 1
    assert releaser.after_step(0.3 / RELEASE_MAX_SHARE * 1.1) and releaser.released == 2
    # refaults come from every thread of the next step at once: two threads pay half the probe's per-page time
    gib, one, two = 1 << 30, Releaser(threads=1), Releaser(threads=2)
    assert one.release_cost(0.1, gib) == pytest.approx(0.1 + gib * fault_seconds_per_byte())
    assert two.release_cost(0.1, gib) == pytest.approx(0.1 + gib * fault_seconds_per_byte() / 2)
