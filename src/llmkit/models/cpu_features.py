"""What this CPU's instructions make fast: read once from /proc/cpuinfo, when this module is imported."""

from __future__ import annotations

from pathlib import Path


def _cpu_flags_name_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# Read at import (a millisecond) and kept in a plain global: torch.compile folds a function that returns one into a
# constant, where reading the file inside a compiled block broke its graph at every linear layer. (It was marked with
# torch.compiler.assume_constant_result, whose import of torch._dynamo cost every command that loads a model 1.3 s.)
_FAST_BF16 = _cpu_flags_name_bf16()


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: PyTorch's bf16 GEMMs run natively (on AVX2 alone they are several times its fp32 ones)."""
    return _FAST_BF16
