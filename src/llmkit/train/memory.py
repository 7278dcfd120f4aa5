"""Peak memory against speed: how freed tensors go back to the operating system during training.

glibc serves allocations above its mmap threshold with their own mapping, unmapped when freed, and the
rest from the heap, which keeps freed blocks for reuse. The threshold adapts upwards (up to 32 MB) once a
large block has been freed, so a training step's transients (upcasts, logits chunks, attention scratch)
end up on the heap, fragment it and stay resident: fast (no page faults), but the peak RSS includes the
holes. `lean_allocator` fixes the threshold at 256 KiB: every large tensor is its own mapping, returned
when freed. On smollm2-135m LoRA this lowers peak RSS by a quarter to a third and costs 30-40 % of step
time on a 2-core VM, where each fresh page is a fault (docs/benchmarks.md, "LoRA SFT of a real model").
So it is an option (`--lean-memory`), off by default.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
LEAN_THRESHOLD = 256 * 1024


def lean_allocator() -> bool:
    """Fix glibc's mmap threshold at 256 KiB for this process; False where that is not glibc."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, LEAN_THRESHOLD))
    except (OSError, AttributeError):
        return False
