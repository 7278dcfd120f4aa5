"""`llmkit promote` without --require-pass says what the gate said of the model it puts behind the alias: a model
never compared to its base, or one whose gate failed, went behind `prod` with one line that said neither."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import tiny_config

from llmkit.config import CompareConfig
from llmkit.eval.gate import gate
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def fresh(lm_workspace: Path, tiny_model):
    """A model no other test gates."""
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    return pretrain(tiny_config(name="loop-promote", max_steps=8), ws, Registry.for_workspace(ws.root))


def test_promote_says_whether_and_how_the_model_was_gated(lm_workspace: Path, tiny_model, fresh, cli_here):
    root = lm_workspace
    ungated = cli_here("promote", "loop-promote", "--alias", "loop-prod", workspace=root, check=True)
    assert f"not gated: llmkit compare BASE {fresh.ref} --data NAME scores it against its base" in ungated.stdout
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    result = gate("tiny-lm", "loop-promote", CompareConfig(data="tiny", max_items=8, general=False), ws, registry)
    assert result["verdict"] == "fail"  # 8 steps lose to 60
    failed = cli_here("promote", "loop-promote", "--alias", "loop-staging", workspace=root, check=True)
    assert f"last gate: fail against {tiny_model.ref} on tiny:v1 (llmkit show " in failed.stdout
    said = json.loads(cli_here("promote", "loop-promote", "--alias", "loop-staging", "--json", workspace=root,
                               check=True).stdout)["gate"]
    assert (said["verdict"], said["base"], said["dataset"]) == ("fail", tiny_model.ref, "tiny:v1")
