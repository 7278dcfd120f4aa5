"""`llmkit train sft --estimate`: the figures of a two-step probe, through the CLI, with nothing registered or written."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.registry import Registry
from tests.conftest import run_cli


def _state(workspace: Path) -> tuple[list[str], list[str]]:
    registry = Registry.for_workspace(workspace)
    records = sorted(r.id for r in registry.list())
    registry.close()
    folders = sorted(str(p) for kind in ("runs", "models") for p in (workspace / kind).glob("*"))
    return records, folders


def test_estimate_prints_the_probe_figures_and_registers_nothing(lm_workspace: Path, tiny_model, chat_data):
    before = _state(lm_workspace)
    proc = run_cli("train", "sft", "--base", "tiny-lm", "--data", chat_data, "--method", "lora", "--lora-r", "4",
                   "--batch-size", "4", "--max-length", "96", "--skip-bad", "--epochs", "2", "--estimate", "--json",
                   workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["path"] == "fast" and figures["method"] == "lora"
    assert 0 < figures["trainable_parameters"] < figures["parameters"]
    assert figures["peak_memory_mb"] > 0 and figures["seconds_per_step"] > 0
    assert figures["seconds_per_epoch"] > 0 and figures["seconds"] > figures["seconds_per_epoch"]  # two epochs
    assert figures["steps"] == 2 * figures["steps_per_epoch"]
    assert "Nothing was registered" in proc.stderr  # the human summary goes to the log (stderr under --json)
    assert _state(lm_workspace) == before


def test_estimate_of_a_bad_run_is_the_runs_own_one_line_error(lm_workspace: Path, tiny_model, chat_data):
    proc = run_cli("train", "sft", "--base", "tiny-lm", "--data", "tiny", "--estimate", workspace=lm_workspace)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "SFT needs one prepared with --task chat" in proc.stderr
