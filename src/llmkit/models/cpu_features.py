"""What this CPU's instructions make fast: read once from /proc/cpuinfo."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@torch.compiler.assume_constant_result  # a constant to torch.compile: reading a file inside a graph breaks it
def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: PyTorch's bf16 GEMMs run natively (on AVX2 alone they are several times its fp32 ones)."""
    return _cpu_flags_name_bf16()


@functools.cache
def _cpu_flags_name_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
