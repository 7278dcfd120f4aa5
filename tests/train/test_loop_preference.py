"""`train dpo` on what `data from-feedback --task preference` makes: pairs and lone rated answers mixed, split by
prompt. The held-out prompts can all be rated answers; DPO must say so about the val split (it blamed train.jsonl),
say what it left out of train, and say which step's weights it registered."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.config import DataConfig, DpoConfig, KtoConfig, LoraConfig
from llmkit.data import prepare
from llmkit.data.splits import assign_split
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.preference import preference_tune
from llmkit.workspace import Workspace

VAL = 0.3


def _split(prompt: list[dict]) -> str:
    """The split `prepare --task preference` gives every record of this prompt (by the prompt, seed 0)."""
    return assign_split(json.dumps(prompt, sort_keys=True, ensure_ascii=False), VAL, 0.0, 0)


def _records(val_pairs: int) -> list[dict]:
    """Pairs on train prompts, a lone rated answer on every other prompt; `val_pairs` pairs on val prompts."""
    out, held_out_pairs = [], 0
    for i in range(40):
        prompt = [{"role": "user", "content": f"name the number {i}"}]
        pair = {"prompt": prompt, "chosen": f"aye, {i}.", "rejected": f"no {i}"}
        if _split(prompt) == "train":
            out.append(pair if i % 2 else {"prompt": prompt, "completion": f"{i}", "label": bool(i % 4)})
        elif held_out_pairs < val_pairs:
            out.append(pair)
            held_out_pairs += 1
        else:
            out.append({"prompt": prompt, "completion": f"it is {i}", "label": bool(i % 3)})
    assert held_out_pairs == val_pairs
    return out


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, tmp_path_factory) -> Workspace:
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    folder = tmp_path_factory.mktemp("loop-prefs")
    for name, val_pairs in (("loop-val-rated", 0), ("loop-val-mixed", 1)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(val_pairs)))
        prepare(DataConfig(inputs=[str(folder / f"{name}.jsonl")], name=name, task="preference", tokenizer="char",
                           splits={"val": VAL, "test": 0.0}), ws, registry)
    # what from-feedback makes of pairs on two prompts: too few to hold one out, so all in train
    few = [{"prompt": [{"role": "user", "content": q}], "chosen": f"aye, {q}", "rejected": q} for q in ("one", "two", "two")]
    few[2]["chosen"] = "yes, two"
    (folder / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in few))
    prepare(DataConfig(inputs=[str(folder / "few.jsonl")], name="loop-few", task="preference", tokenizer="char",
                       splits={"val": 0.0, "test": 0.0}), ws, registry)
    registry.close()
    return ws


def _cfg(kind=DpoConfig, **overrides):
    return kind(**(dict(base="tiny-lm", max_steps=2, batch_size=4, eval_every=1, checkpoint_every=2, seed=1,
                        lora=LoraConfig(r=4, alpha=8), precision="fp32") | overrides))


def test_dpo_on_held_out_rated_answers_only_names_the_val_split_and_the_way_out(ws):
    registry = Registry.for_workspace(ws.root)
    ds = registry.find("loop-val-rated", "dataset")
    val = [json.loads(line) for line in (Path(ds.path) / "records" / "val.jsonl").read_text().splitlines()]
    assert val and not any("chosen" in r for r in val)  # the situation: train has pairs, val none
    runs = len(registry.list("run"))
    with pytest.raises(UserError) as err:
        preference_tune(_cfg(data="loop-val-rated", name="loop-dpo-none"), "dpo", ws, registry)
    message = str(err.value)
    assert "records/val.jsonl" in message and "train.jsonl" not in message
    assert f"the val split holds {len(val)} rated answers and no pair" in message
    assert "--val 0.3" in message and "train kto" in message
    assert len(registry.list("run")) == runs
    # KTO takes the same dataset as it is
    assert preference_tune(_cfg(KtoConfig, data="loop-val-rated", name="loop-kto"), "kto", ws, registry).name == "loop-kto"


def test_dpo_says_what_it_left_out_and_which_step_it_registered(ws):
    registry = Registry.for_workspace(ws.root)
    out = io.StringIO()
    model = preference_tune(_cfg(data="loop-val-mixed", name="loop-dpo"), "dpo", ws, registry,
                            console=Console(file=out, width=400))
    text = out.getvalue()
    train = [json.loads(line) for line in (Path(registry.find("loop-val-mixed", "dataset").path) / "records"
                                           / "train.jsonl").read_text().splitlines()]
    rated = sum("chosen" not in r for r in train)
    assert rated and f"({rated} rated answers left out (DPO learns from pairs; 'llmkit train kto' takes them), 0 skipped" in text
    best = registry.find(model.lineage["run"]["id"], "run").metrics["best_step"]
    assert f"(the registered weights: step {best} of 2)" in text


def test_dpo_on_too_few_prompts_to_hold_one_out_says_why_and_what_helps(ws):
    registry = Registry.for_workspace(ws.root)
    with pytest.raises(UserError) as err:
        preference_tune(_cfg(data="loop-few", name="loop-dpo-few"), "dpo", ws, registry)
    message = str(err.value)
    assert "its train records cover 2 prompts, and the records of one prompt stay in one split" in message
    assert "--val 0.2" in message and "once there is feedback on more prompts" in message
