"""Runs: a run's name follows the registry's one name rule, checked before its folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config import PretrainConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.checkpoint import start_run
from llmkit.workspace import Workspace
from tests.conftest import TINY_FLAGS, run_cli, write_tiny_config


def test_train_with_a_name_leaving_the_workspace_writes_and_registers_nothing(lm_workspace: Path, tmp_path: Path):
    config = write_tiny_config(tmp_path / "tiny.yaml")
    above = [lm_workspace.parent, lm_workspace.parent.parent]

    def escaped() -> set[Path]:
        return {p for folder in above for p in folder.iterdir() if "escaped" in p.name}

    before, runs_before = escaped(), set((lm_workspace / "runs").iterdir())
    proc = run_cli("train", "pretrain", "--config", str(config), "--data", "tiny", "--name", "../../escaped",
                   "--max-steps", "1", *TINY_FLAGS, workspace=lm_workspace)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: model name '../../escaped'") and "Traceback" not in proc.stderr
    assert escaped() == before and set((lm_workspace / "runs").iterdir()) == runs_before
    assert not any("escaped" in r.name for r in Registry.for_workspace(lm_workspace).list())


def test_start_run_refuses_a_bad_name_before_making_a_folder(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    with pytest.raises(UserError, match="run name '../x'"):
        start_run(ws, registry, "../x", "pretrain", PretrainConfig(data="d"), [])
    assert list((ws.root / "runs").iterdir()) == [] and list(tmp_path.iterdir()) == [ws.root]
    assert registry.list() == []
