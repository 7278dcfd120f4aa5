"""How many cores this process may use: what thread counts and worker counts are sized from."""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
