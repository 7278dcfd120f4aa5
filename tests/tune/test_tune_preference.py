"""`llmkit tune dpo | grpo` on the tiny char model: the preference and reward trainers are stages like the others
(trials registered, the best model kept), with their own metrics and dataset kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import DataConfig, DpoConfig, GrpoConfig, LoraConfig, TuneConfig, TuneSpacesConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.tune import tune
from llmkit.workspace import Workspace
from tests.train.test_preference import _pairs


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, chat_data, tmp_path_factory):
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    file = tmp_path_factory.mktemp("tune-prefs") / "pairs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    prepare(DataConfig(inputs=[str(file)], name="tune-prefs", task="preference", tokenizer="char",
                       splits={"val": 0.2, "test": 0.0}), ws, registry)
    return ws


def test_tune_dpo_searches_beta_and_keeps_the_best(ws):
    registry = Registry.for_workspace(ws.root)
    cfg = TuneConfig(stage="dpo", data="tune-prefs", base="tiny-lm", trials=2, pruner="none", study="dpo-study",
                     space=None)  # the default metric: the share of pairs ranked right (val_loss moves with beta)
    stage = DpoConfig(max_steps=4, batch_size=8, lr=1e-2, eval_every=2, checkpoint_every=4, lora=LoraConfig(r=4, alpha=8))
    result = tune(cfg, stage, ws, registry)
    assert result.states["complete"] == 2
    trials = [r for rel, r in registry.children(result.record_id) if rel == "trial_of"]
    assert {tuple(sorted(r.metrics["tune_params"])) for r in trials} == {("beta", "lora.alpha", "lora.r", "lr")}
    assert (result.metric, result.direction) == ("val_reward_accuracy", "max") and 0.0 <= result.best["value"] <= 1.0
    assert "beta" in TuneSpacesConfig().dpo.model_dump() and "beta" not in TuneSpacesConfig().kto.model_dump()
    assert [m.id for rel, m in registry.children(result.record_id) if rel == "best_of"] == [result.best["model_id"]]


def test_stage_checks_name_the_dataset_kind_and_metrics(ws):
    registry = Registry.for_workspace(ws.root)
    with pytest.raises(UserError, match="tune-prefs.*'preference' dataset; grpo needs one prepared with --task chat"):
        tune(TuneConfig(stage="grpo", data="tune-prefs", base="tiny-lm", trials=1), GrpoConfig(reward="number"), ws, registry)
    with pytest.raises(UserError, match="--metric val_accuracy is not reported by dpo's evaluation; it reports val_loss, "
                                        "val_reward_margin, val_reward_accuracy"):
        tune(TuneConfig(stage="dpo", data="tune-prefs", base="tiny-lm", trials=1, metric="val_accuracy"), DpoConfig(), ws,
             registry)
