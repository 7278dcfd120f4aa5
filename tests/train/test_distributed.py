"""DDP on CPU (gloo): two processes with half the batch each match one process with the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_FLAGS, write_tiny_config


def _losses(workspace: Path, prefix: str) -> list[float]:
    run = next(p for p in (workspace / "runs").iterdir() if p.name.startswith(prefix + "-"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(lm_workspace: Path, tmp_path: Path):
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace), "OMP_NUM_THREADS": "1"}
    config = write_tiny_config(tmp_path / "tiny.yaml")
    common = ["train", "pretrain", "--data", "tiny", "--config", str(config), "--max-steps", "10",
              "--eval-every", "10", "--checkpoint-every", "10", *TINY_FLAGS]
    common[common.index("--batch-size") + 1] = "2"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "--master_addr=127.0.0.1", "-m", "llmkit", *common,
                          "--name", "ddp"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    single_args = list(common)
    single_args[single_args.index("--batch-size") + 1] = "4"
    one = subprocess.run([sys.executable, "-m", "llmkit", *single_args, "--name", "single"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp, single = _losses(lm_workspace, "ddp"), _losses(lm_workspace, "single")
    assert len(ddp) == len(single) == 10
    for step, (a, b) in enumerate(zip(ddp, single, strict=True), start=1):
        assert a == pytest.approx(b, rel=1e-4), f"step {step}: ddp {a} vs single {b}"
    # Only rank 0 wrote: one run folder and one model for the DDP run.
    assert len([p for p in (lm_workspace / "runs").iterdir() if p.name.startswith("ddp-")]) == 1
    assert len([p for p in (lm_workspace / "models").iterdir() if p.name.startswith("ddp-")]) == 1
