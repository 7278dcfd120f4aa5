"""llmkit's one native kernel (`kernels/q8_matmul.c`), compiled on first use and loaded with ctypes.

Why compile here rather than ship a wheel or use torch.utils.cpp_extension: the kernel is a page of
plain C with a C ABI, so the machine's C compiler builds it in well under a second with no PyTorch
headers (cpp_extension takes most of a minute per build and needs ninja). The library is cached under
llmkit's cache folder, named by a hash of the source and flags, so a changed kernel is rebuilt and an
unchanged one never is.

It is a speed-up, never a requirement: on a CPU without AVX2 and FMA, without a C compiler, or with
LLMKIT_NATIVE=0, `q8_matmul()` is unavailable and the quantized layers run on PyTorch's own kernels.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "kernels" / "q8_matmul.c"
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
BLOCK = 32  # inputs per activation and weight scale, fixed in the kernel


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):  # not Linux: no cheap way to ask, so no native kernel
        return False
    return {"avx2", "fma", "f16c"} <= set(flags.split(":", 1)[1].split())


def _compiler() -> str | None:
    return next(filter(None, (shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc"))), None)


def _build(compiler: str, target: Path) -> None:
    # Built beside the target and renamed into place: a process loading it never sees half a file,
    # and the lock makes concurrent first uses (test workers, two CLI calls) build it once.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".q8_matmul.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *FLAGS, "-o", str(out), str(SOURCE)], check=True, capture_output=True,
                           timeout=120)
            out.rename(target)


@cache
def _library():
    if os.environ.get("LLMKIT_NATIVE", "1") == "0" or sys.platform != "linux" or not _cpu_has_avx2_fma():
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    from llmkit.models.pretrained import cache_dir

    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"q8_matmul-{digest}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        # PyTorch has loaded its libgomp already; the kernel's libgomp.so.1 resolves to that one.
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    fn = lib.llmkit_q8_matmul
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_float,
                                                                  ctypes.c_void_p]
    fn.restype = ctypes.c_int
    attend = lib.llmkit_attend_one
    attend.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_void_p]
    attend.restype = None
    fn.attend = attend
    return fn


def available() -> bool:
    return _library() is not None


def q8_matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, norm: torch.Tensor | None = None,
              eps: float = 0.0, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ W.T with W = codes (N, K) int8 times scales (N, K / 32) fp32 per block of 32 inputs; x is
    quantized to int8 per block of 32 for the product. Returns (M, N) fp32. Needs `available()`.

    norm (K,): RMS-normalise each row of x first (x * rsqrt(mean(x^2) + eps) * norm); residual (M, N): added to
    the result. Both fused into the one call (a decode step is mostly small ops otherwise)."""
    fn = _library()
    x = x.float().contiguous()
    m, k = x.shape
    y = torch.empty(m, codes.shape[0], dtype=torch.float32)
    if m == 0:  # nothing to multiply (and malloc(0) may return NULL, which the kernel reports as out of memory)
        return y
    if norm is not None:
        norm = norm.float().contiguous()
    if residual is not None:
        residual = residual.float().contiguous()
    # torch's thread count: a serving engine lowers it while several workers decode at once
    if fn(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), m, codes.shape[0], k, torch.get_num_threads(),
          None if norm is None else norm.data_ptr(), eps, None if residual is None else residual.data_ptr()):
        raise MemoryError("q8_matmul could not allocate its activation buffer")
    return y


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one (already scaled) query per head over one sequence: q (nkv, n_rep, hd); k, v
    (nkv, L, hd) fp32 views whose rows are contiguous (a KV-cache slot's). Returns (nkv, n_rep, hd), on the calling
    thread. Needs `available()`."""
    nkv, n_rep, hd = q.shape
    length = k.shape[1]
    if k.stride() != v.stride() or k.stride()[1:] != (hd, 1) or q.dtype != torch.float32 or k.dtype != torch.float32:
        raise ValueError("attend_one takes fp32 K/V views with contiguous rows and the same strides")
    q = q.contiguous()
    out = torch.empty_like(q)
    scratch = torch.empty(length, dtype=torch.float32)
    _library().attend(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), nkv, n_rep, hd, length, k.stride(0),
                      scratch.data_ptr())
    return out
