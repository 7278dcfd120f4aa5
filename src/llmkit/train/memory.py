"""Peak memory against speed: how freed tensors go back to the operating system during training.

glibc serves allocations above its mmap threshold with their own mapping, unmapped when freed, and the
rest from the heap, which keeps freed blocks for reuse. The threshold adapts upwards (up to 32 MB) once a
large block has been freed, so a training step's transients (upcasts, logits chunks, attention scratch)
end up on the heap, fragment it and stay resident: fast (no page faults), but the peak RSS includes the
holes. `lean_allocator` fixes the threshold at 256 KiB: every large tensor is its own mapping, returned
when freed. On smollm2-135m LoRA this lowers peak RSS by a quarter to a third and costs 30-40 % of step
time on a 2-core VM, where each fresh page is a fault (docs/benchmarks.md, "LoRA SFT of a real model").
So it is an option (`--lean-memory`), off by default.

Every training run does two cheaper things instead. It fixes the threshold at 4 MiB (`map_large_blocks`): blocks of
4 MiB and more (a 135M model's widest activations and their gradients, logits chunks) get their own mappings and
everything smaller stays on the heap, since the adaptive threshold's climb to 32 MB is what lets a step's
multi-megabyte tensors carve the heap into holes that smaller ones then split. smollm2-135m LoRA in bf16 on a 2-core
Xeon without bf16 instructions, with `bf16_matmul`'s work buffers keeping its fp32 transients off the allocator: peak
RSS 2.1-2.3 GB with the adaptive threshold, 1.95 GB at 4 MiB with steps no slower (2 MiB: 1.67 GB, 7 % slower;
1 MiB: 1.48 GB, 20 % slower; docs/benchmarks.md, "A heap without the holes").

And it calls `release_freed` after a long step, when that is cheap (`Releaser`): glibc's
malloc_trim hands the free pages inside the heap's holes back to the system (madvise), keeping the heap's
layout, so the next step refills them with one page fault per page reused instead of a fault on every
allocation. On smollm2-135m LoRA (bf16) it lowers peak RSS from about 2.7 to 2.3 GB on an AVX2 CPU (steps of
~12 s) and from 2.3 to 1.9 GB on one with AVX512-BF16 -- where a step takes 1.45 s and the release and its
refaults add 0.5 s to it (35 %). So the release is measured: the trim's own time plus what refaulting the pages
it returned costs on this machine, and a run keeps releasing only while that is at most a tenth of a step.
--lean-memory goes further (1.6 GB) at its price.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
LEAN_THRESHOLD = 256 * 1024
LARGE_BLOCK = 4 << 20  # every training run's threshold (map_large_blocks)
# Steps shorter than this keep their freed pages: the trim and the refaults would be a visible share of a
# step of a few milliseconds (tiny models), and their transients are small anyway.
RELEASE_AFTER_STEP_S = 0.5
RELEASE_MAX_SHARE = 0.1  # of a step's time: what a release (trim and refaults) may cost and still be made


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_fixed_threshold: int | None = None  # what this process fixed glibc's mmap threshold at, if anything


def _fix_threshold(size: int) -> bool:
    global _fixed_threshold
    try:
        done = bool(_libc().mallopt(M_MMAP_THRESHOLD, size))
    except AttributeError:  # no libc, or one without mallopt
        return False
    if done:
        _fixed_threshold = size
    return done


def lean_allocator() -> bool:
    """Fix glibc's mmap threshold at 256 KiB for this process; False where that is not glibc."""
    return _fix_threshold(LEAN_THRESHOLD)


def map_large_blocks() -> bool:
    """Blocks of LARGE_BLOCK and more get their own mappings from now on in this process (glibc's threshold fixed
    there, no longer adaptive), unless a lower threshold was fixed already (--lean-memory keeps its 256 KiB) or the
    environment fixed one (MALLOC_MMAP_THRESHOLD_, glibc's tunables): the user's choice stands. False where that is
    not glibc."""
    environment = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    if environment or (_fixed_threshold is not None and _fixed_threshold <= LARGE_BLOCK):
        return True
    return _fix_threshold(LARGE_BLOCK)


def release_freed() -> bool:
    """Return the free pages of glibc's heaps (every arena) to the system; False where that is not glibc."""
    try:
        _libc().malloc_trim(0)
    except AttributeError:
        return False
    return True


def resident_bytes() -> int:
    """This process's resident set now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@functools.cache
def fault_seconds_per_byte() -> float:
    """What a fresh page costs here beyond writing it, per byte: 64 MiB written twice, the first pass faulting
    every page in (measured once per process: a VM's page faults cost several times a bare machine's). An anonymous
    mapping of small pages, as the heap's are (numpy would ask for huge pages, which fault 512 times less often)."""
    import mmap

    size = 64 << 20
    block = mmap.mmap(-1, size)
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(block))
        start = time.perf_counter()
        ctypes.memset(address, 1, size)
        first = time.perf_counter() - start
        start = time.perf_counter()
        ctypes.memset(address, 2, size)
        again = time.perf_counter() - start
    finally:
        try:
            block.close()
        except BufferError:  # the ctypes view still exports it: the mapping goes with the object
            pass
    return max(0.0, first - again) / size


class Releaser:
    """After each training step, hands the heap's free pages back (`release_freed`) when that is cheap: the step
    took RELEASE_AFTER_STEP_S or more, and the last release cost (its own time, plus refaulting what it returned)
    at most RELEASE_MAX_SHARE of a step. The first long step always releases, which measures the cost.

    `threads`: the intra-op threads the step runs on. The refaults come in the next step, where torch's kernels write
    their outputs from every thread at once, so they cost a share of what the single-threaded probe measures per page:
    smollm2-135m LoRA in bf16 on a 2-core Xeon without bf16 instructions took 380k more faults per step after each
    release and 0.30 s more (0.8 us a fault), where `fault_seconds_per_byte` gives 1.8 us per page."""

    def __init__(self, threads: int = 1):
        self.cost_s: float | None = None
        self.released = 0  # releases made
        self.threads = max(1, threads)

    def after_step(self, step_s: float) -> bool:
        if step_s < RELEASE_AFTER_STEP_S or (self.cost_s is not None and self.cost_s > RELEASE_MAX_SHARE * step_s):
            return False
        before, start = resident_bytes(), time.perf_counter()
        if not release_freed():
            return False
        returned = max(0, before - resident_bytes())
        self.cost_s = self.release_cost(time.perf_counter() - start, returned)
        self.released += 1
        return True

    def release_cost(self, trim_s: float, returned_bytes: int) -> float:
        """Seconds a release costs: the trim's own time, and the next step refaulting what it returned."""
        return trim_s + returned_bytes * fault_seconds_per_byte() / self.threads
