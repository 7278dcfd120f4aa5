"""Runs: a run's name follows the registry's one name rule, checked before its folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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


class NeverUnpickled:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/llmkit-test-state-was-unpickled"),))


def test_the_training_state_round_trips_without_pickle(tmp_path: Path):
    from llmkit.train.checkpoint import load_state, save_state

    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95))
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"step": 7, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "best": float("inf"),
             "evals": 2, "job": {"sampler": torch.Generator().manual_seed(3).get_state()}, "note": None}
    save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    back = load_state(tmp_path)
    assert back["step"] == 7 and back["best"] == float("inf") and back["note"] is None
    assert torch.equal(back["torch_rng"], state["torch_rng"]) and torch.equal(back["job"]["sampler"], state["job"]["sampler"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    again = torch.optim.AdamW(net.parameters(), lr=1e-3)
    again.load_state_dict(back["optimizer"])  # int-keyed per-parameter state comes back as the optimizer wants it
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(again.state_dict()["state"][0][key], value)


def test_a_pickled_state_pt_is_refused_unread(tmp_path: Path):
    from llmkit.train.checkpoint import list_checkpoints, load_state

    step = tmp_path / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(step / "model.safetensors"))
    torch.save({"step": NeverUnpickled()}, step / "state.pt")
    assert list_checkpoints(tmp_path) == [step]  # found, so a resume says why it cannot use it
    with pytest.raises(UserError, match=r"state.pt: a pickle, which llmkit never unpickles"):
        load_state(step)
    assert not Path("/tmp/llmkit-test-state-was-unpickled").exists()


def test_a_run_continued_again_to_the_same_step_gets_a_model_folder_no_version_has(tmp_path: Path):
    from llmkit.train.checkpoint import run_model_folder

    ws = Workspace.open(tmp_path / "ws")
    made = []
    for _ in range(4):  # the run's model, then one per continuation to step 8 (a checkpoint deleted, say)
        folder = run_model_folder(ws, "m", "abc123", 8)
        assert folder not in made and not folder.exists()
        folder.mkdir()
        made.append(folder)
    assert [p.name for p in made] == ["m-abc123", "m-abc123-step8", "m-abc123-step8-2", "m-abc123-step8-3"]
