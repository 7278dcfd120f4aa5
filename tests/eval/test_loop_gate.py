"""`llmkit compare BASE TUNED --data PREFS` on what `data from-feedback --task preference` makes: held-out pairs and
lone rated answers mixed. The verdict rests on the pairs alone; the rated answers left out were not said (the table
read "val, 1 items" over a split of many)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import CompareConfig, DataConfig
from llmkit.data import prepare
from llmkit.data.splits import assign_split
from llmkit.eval.gate import gate
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, tmp_path_factory) -> Workspace:
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    rows = []
    for i in range(30):
        prompt = [{"role": "user", "content": f"name the number {i}"}]
        pair = {"prompt": prompt, "chosen": f"aye, {i}.", "rejected": f"no {i}"}
        rows.append(pair if i % 3 == 0 else {"prompt": prompt, "completion": f"it is {i}", "label": bool(i % 2)})
    held_out = [r for r in rows if assign_split(json.dumps(r["prompt"], sort_keys=True, ensure_ascii=False), 0.4, 0.0) == "val"]
    assert any("chosen" in r for r in held_out) and any("label" in r for r in held_out)
    file = tmp_path_factory.mktemp("loop-gate") / "mixed.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(inputs=[str(file)], name="loop-gate-mixed", task="preference", tokenizer="char",
                       splits={"val": 0.4, "test": 0.0}), ws, registry)
    pretrain(tiny_config(name="loop-gate-other", max_steps=8), ws, registry)
    registry.close()
    return ws


def test_the_gate_says_how_many_held_out_rated_answers_it_did_not_score(ws):
    registry = Registry.for_workspace(ws.root)
    ds = registry.find("loop-gate-mixed", "dataset")
    val = [json.loads(line) for line in (Path(ds.path) / "records" / "val.jsonl").read_text().splitlines()]
    pairs, rated = sum("chosen" in r for r in val), sum("label" in r for r in val)
    result = gate("tiny-lm", "loop-gate-other", CompareConfig(data="loop-gate-mixed", general=False), ws, registry)
    assert result["kind"] == "preference" and result["items"] == pairs
    assert (f"{rated} rated answers of loop-gate-mixed:v1 val are not scored: the gate ranks the split's pairs when "
            "it has any, and rated answers (rated_answer_auc) only in a split without pairs") in result["warnings"]
