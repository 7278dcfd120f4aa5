"""What `llmkit train pretrain --help` promises about the loop: --precision, --compile, gradient accumulation.

Each compares two short TINY runs that should agree (or differ) in a known way, on the losses the
run wrote to metrics.jsonl and on the weights of its last checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmkit.registry import Registry
from llmkit.train import pretrain
from llmkit.workspace import Workspace
from tests.conftest import run_cli, tiny_config

STEPS = 4


def _run(lm_workspace: Path, name: str, **overrides):
    ws = Workspace.open(lm_workspace)
    cfg = tiny_config(**{"name": name, "max_steps": STEPS, "eval_every": STEPS, "checkpoint_every": STEPS,
                         "eval_max_batches": 1, **overrides})
    return pretrain(cfg, ws, Registry.for_workspace(ws.root))


def _losses(model) -> list[float]:
    rows = [json.loads(line) for line in (Path(model.lineage["run"]["path"]) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _last_weights(model) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model.lineage["run"]["path"]) / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors"))


def _train_linear_dtypes(run) -> tuple[object, set[torch.dtype]]:
    """Run `run()` and collect the dtypes that Linear layers produced in training mode: the
    precision autocast really used, not the one the summary claims."""
    seen: set[torch.dtype] = set()

    def hook(module, _args, output):
        if isinstance(module, torch.nn.Linear) and module.training and torch.is_tensor(output):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        return run(), seen
    finally:
        handle.remove()


def test_precision_bf16_runs_under_bf16_autocast_and_stays_close_to_fp32(lm_workspace: Path):
    fp32, fp32_dtypes = _train_linear_dtypes(lambda: _run(lm_workspace, "prec-fp32", precision="fp32"))
    bf16, bf16_dtypes = _train_linear_dtypes(lambda: _run(lm_workspace, "prec-bf16", precision="bf16"))
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert fp32.lineage["metrics"]["precision"] == "fp32" and bf16.lineage["metrics"]["precision"] == "bf16"
    a, b = _losses(fp32), _losses(bf16)
    assert len(a) == len(b) == STEPS
    # bf16 keeps 8 bits of mantissa: the losses move by about 1e-3, never by whole percents.
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 1e-5, "bf16 gave fp32's losses: autocast did nothing"
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=0.02)


def test_precision_auto_on_a_cpu_is_bf16_only_with_hardware_bf16(lm_workspace: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks by the GPU, not by the CPU flags")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    expected = "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "fp32"
    model, dtypes = _train_linear_dtypes(lambda: _run(lm_workspace, "prec-auto", precision="auto", max_steps=1,
                                                      eval_every=1, checkpoint_every=1))
    assert model.lineage["metrics"]["precision"] == expected
    assert dtypes == {torch.bfloat16 if expected == "bf16" else torch.float32}


def test_precision_fp16_on_a_cpu_is_a_one_line_error(lm_workspace: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where fp16 is allowed")
    proc = run_cli("train", "pretrain", "--data", "tiny", "--precision", "fp16", "--max-steps", "1", workspace=lm_workspace)
    assert proc.returncode == 2, proc.stderr
    assert "train.precision = 'fp16' needs a CUDA GPU" in proc.stderr and "bf16 or fp32" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # torch.compile (inductor) costs ~20 s of compiling once, even for TINY
def test_compile_gives_eager_losses_and_weights_and_really_compiles(lm_workspace: Path):
    from torch._dynamo.utils import counters

    # fp32 on every CPU ("auto" is bf16 where the CPU has bf16 instructions): compiled and eager bf16 round in
    # different places, so the comparison below would measure bf16, not the compile
    eager = _run(lm_workspace, "eager", compile=False, precision="fp32")
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = _run(lm_workspace, "compiled", compile=True, precision="fp32")
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert graphs >= 1, "--compile ran eagerly: dynamo captured no graph"
    assert compiled.lineage["config"]["compile"] is True
    for x, y in zip(_losses(eager), _losses(compiled), strict=True):
        assert y == pytest.approx(x, rel=1e-4, abs=1e-5)
    a, b = _last_weights(eager), _last_weights(compiled)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-3)


def test_gradient_accumulation_of_two_half_batches_equals_one_full_batch(lm_workspace: Path):
    # Dropout 0 (the TINY default): both runs draw the same 8 windows per step from the same sampler.
    # fp32 on every CPU: under bf16 (what "auto" is on a CPU with bf16 instructions) two half batches round
    # differently from one whole batch, and the equality below would fail for bf16's sake
    full = _run(lm_workspace, "accum-1x8", batch_size=8, grad_accum=1, precision="fp32")
    accumulated = _run(lm_workspace, "accum-2x4", batch_size=4, grad_accum=2, precision="fp32")
    a, b = _losses(full), _losses(accumulated)
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=1e-5)
    assert a[-1] < a[0] - 0.05, "the loss did not fall: the runs took no real steps, so equality would prove nothing"
    wa, wb = _last_weights(full), _last_weights(accumulated)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-4)



def test_a_training_run_maps_large_blocks_and_frees_the_matmuls_work_buffers(lm_workspace: Path, monkeypatch):
    """What every run does about memory (train/memory.py, train/bf16_matmul.py), whatever the stage."""
    from llmkit.train import bf16_matmul, memory

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(memory, "_fixed_threshold", None)  # as in a fresh process
    bf16_matmul._scratch.take("x", (4, 4), torch.device("cpu"))  # a buffer left by earlier work on this thread
    _run(lm_workspace, "memory", max_steps=1, eval_every=1, checkpoint_every=1, precision="fp32")
    if sys.platform.startswith("linux"):
        assert memory._fixed_threshold == memory.LARGE_BLOCK
    assert not bf16_matmul._scratch.buffers
