"""`llmkit train classify|distill` stopped by a real Ctrl-C / SIGTERM, then `--resume RUN`.

The README promises that the fine-tuning loop checkpoints on Ctrl-C and that `--resume RUN`
continues exactly. Each test starts the real CLI, waits for its first checkpoint, signals it, resumes
it with the run id it printed, and compares with an uninterrupted run of the same command: the loss
at every step, the evaluations, the registered weights and the summary must all be the same.
Every process runs on one thread, so the matrix products are the same from one process to the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmkit.train.checkpoint import list_checkpoints

TIMING = {"seconds", "tokens_per_s", "peak_memory_mb"}  # how fast, not what was learnt


def _env(workspace: Path) -> dict[str, str]:
    return {**os.environ, "LLMKIT_HOME": str(workspace), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(run_dir: Path) -> tuple[dict[int, float], dict[int, dict]]:
    """Loss per step and evaluation per step from metrics.jsonl; a redone step replaces the first try."""
    losses, evals = {}, {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            losses[row["step"]] = row["loss"]
        elif any(k.startswith("val_") for k in row):
            evals[row["step"]] = {k: v for k, v in row.items() if k != "time"}
    return losses, evals


def _run_dir(workspace: Path, name: str) -> Path | None:
    found = [p for p in (workspace / "runs").glob(f"{name}-*") if p.is_dir()]
    return found[0] if found else None


def _interrupt_and_resume(workspace: Path, tmp_path: Path, stage: str, args: list[str], name: str, sig: int):
    """(uninterrupted result, resumed result, step the interrupted run stopped at), results as --json dicts."""
    env = _env(workspace)
    base = [sys.executable, "-m", "llmkit", "train", stage, *args, "--json"]
    # The uninterrupted run goes alongside the one we interrupt: two processes, one thread each.
    with open(tmp_path / "straight.out", "w") as out, open(tmp_path / "straight.err", "w") as err:
        straight = subprocess.Popen([*base, "--name", f"{name}-straight"], env=env, stdout=out, stderr=err)
        with open(tmp_path / "cut.out", "w") as cut_out, open(tmp_path / "cut.err", "w") as cut_err:
            cut = subprocess.Popen([*base, "--name", f"{name}-cut"], env=env, stdout=cut_out, stderr=cut_err)
            deadline = time.time() + 600
            run_dir = None
            while time.time() < deadline and cut.poll() is None:
                run_dir = run_dir or _run_dir(workspace, f"{name}-cut")
                if run_dir is not None and list_checkpoints(run_dir):
                    break
                time.sleep(0.01)
            cut.send_signal(sig)
            cut.wait(timeout=300)
        straight.wait(timeout=600)
    # rich wraps its lines at the terminal width: compare with the line breaks taken out.
    said = " ".join(((tmp_path / "cut.out").read_text() + (tmp_path / "cut.err").read_text()).split())
    assert straight.returncode == 0, (tmp_path / "straight.err").read_text()[-3000:]
    assert run_dir is not None, f"the run never wrote a checkpoint:\n{said[-3000:]}"
    assert cut.returncode == 130, f"the signalled run did not stop as interrupted ({cut.returncode}):\n{said[-3000:]}"
    hint = re.search(rf"stopped at step (\d+); continue with: llmkit train {stage} --resume (\w+)", said)
    assert hint, said[-3000:]
    stopped_at, run_id = int(hint.group(1)), hint.group(2)
    assert [c.name for c in list_checkpoints(run_dir)][-1] == f"step-{stopped_at:06d}"

    resumed = subprocess.run([sys.executable, "-m", "llmkit", "train", stage, "--resume", run_id, "--json"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {stopped_at}" in " ".join(resumed.stderr.split())
    return json.loads((tmp_path / "straight.out").read_text()), json.loads(resumed.stdout), stopped_at


def _assert_same_run(straight: dict, resumed: dict, stopped_at: int, total_steps: int) -> None:
    a_dir = Path(_model_lineage(straight)["run"]["path"])
    b_dir = Path(_model_lineage(resumed)["run"]["path"])
    assert 0 < stopped_at < total_steps, "the run finished before the signal: nothing was resumed"
    a_loss, a_eval = _rows(a_dir)
    b_loss, b_eval = _rows(b_dir)
    assert sorted(a_loss) == sorted(b_loss) == list(range(1, total_steps + 1))
    for step in a_loss:
        assert b_loss[step] == pytest.approx(a_loss[step], rel=1e-6, abs=1e-7), f"loss at step {step}"
    assert a_eval.keys() == b_eval.keys()
    for step, row in a_eval.items():
        assert b_eval[step] == pytest.approx(row, rel=1e-6, abs=1e-7), f"evaluation at step {step}"
    a_w, b_w = _weights(Path(straight["path"])), _weights(Path(resumed["path"]))
    assert a_w.keys() == b_w.keys() and a_w
    for key in a_w:
        torch.testing.assert_close(b_w[key], a_w[key], atol=1e-6, rtol=1e-5)
    a_m = {k: v for k, v in straight["metrics"].items() if k not in TIMING}
    b_m = {k: v for k, v in resumed["metrics"].items() if k not in TIMING}
    assert set(b_m) == set(a_m), f"summary lost {sorted(set(a_m) - set(b_m))}, gained {sorted(set(b_m) - set(a_m))}"
    for key, value in a_m.items():
        if isinstance(value, float):
            assert b_m[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
        else:
            assert b_m[key] == value, key


def _model_lineage(result: dict) -> dict:
    return json.loads((Path(result["path"]) / "llmkit.json").read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    file = folder / "adapter_model.safetensors"
    return load_file(str(file if file.exists() else folder / "model.safetensors"))


CLASSIFY_STEPS = 80


@pytest.mark.slow
def test_classify_stopped_by_ctrl_c_resumes_to_the_uninterrupted_result(lm_workspace: Path, tiny_model, sms_data,
                                                                         tmp_path: Path):
    # LoRA dropout makes the result depend on the saved RNG state, not only on the weights and the optimizer.
    args = ["--base", "tiny-lm", "--data", sms_data, "--method", "lora", "--lora-r", "4", "--lora-alpha", "8",
            "--lora-dropout", "0.1", "--max-steps", str(CLASSIFY_STEPS), "--batch-size", "8", "--max-length", "48",
            "--lr", "5e-3", "--checkpoint-every", "5", "--eval-every", "20", "--seed", "2"]
    straight, resumed, stopped_at = _interrupt_and_resume(lm_workspace, tmp_path, "classify", args, "clf-resume",
                                                          signal.SIGINT)
    _assert_same_run(straight, resumed, stopped_at, CLASSIFY_STEPS)


DISTILL_STEPS = 60


@pytest.mark.slow
def test_distill_stopped_by_sigterm_resumes_to_the_uninterrupted_result(lm_workspace: Path, tiny_model, tmp_path: Path):
    args = ["--teacher", "tiny-lm", "--data", "tiny", "--student-preset", "nano", "--student-layers", "1",
            "--max-steps", str(DISTILL_STEPS), "--batch-size", "8", "--max-length", "32", "--lr", "3e-3",
            "--checkpoint-every", "5", "--eval-every", "20", "--eval-max-examples", "16", "--seed", "4"]
    straight, resumed, stopped_at = _interrupt_and_resume(lm_workspace, tmp_path, "distill", args, "distill-resume",
                                                          signal.SIGTERM)
    _assert_same_run(straight, resumed, stopped_at, DISTILL_STEPS)
