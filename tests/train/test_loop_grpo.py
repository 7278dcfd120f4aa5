"""`train grpo` with a reward every answer meets: each group's answers score the same, every advantage is 0 and the
run learns nothing. It printed a loss of 0.0000 and "val reward 1.000 -> 1.000" and registered the base's weights as
a tuned model without a word; it says so now."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from llmkit.config import DataConfig, GrpoConfig, LoraConfig
from llmkit.data import prepare
from llmkit.registry import Registry
from llmkit.train.grpo import grpo
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, tmp_path_factory) -> Workspace:
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("king", "queen", "lord", "night", "sword", "crown", "heart", "blood", "grace", "love")]
    file = tmp_path_factory.mktemp("loop-grpo") / "says.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(inputs=[str(file)], name="loop-says", task="chat", tokenizer="char",
                       splits={"val": 0.3, "test": 0.0}), ws, registry)
    registry.close()
    return ws


def _run(ws, **reward) -> str:
    out = io.StringIO()
    cfg = GrpoConfig(base="tiny-lm", data="loop-says", max_steps=2, batch_size=2, group_size=4, max_new_tokens=6,
                     max_length=32, eval_every=2, eval_max_examples=2, seed=3, lora=LoraConfig(r=4, alpha=8),
                     name=f"loop-grpo-{reward['reward']}", **reward)
    grpo(cfg, ws, Registry.for_workspace(ws.root), console=Console(file=out, width=400))
    return out.getvalue()


def test_a_reward_every_answer_meets_is_said_to_teach_nothing(ws):
    text = _run(ws, reward="length", min_chars=0, max_chars=10_000)
    assert "warning: in every group of 4 answers to a prompt, all answers got the same reward, so the run taught " \
           "the model nothing" in " ".join(text.split())


def test_a_reward_that_tells_answers_apart_is_not_said_to_teach_nothing(ws):
    # random 6-token answers of the tiny char model: some start with a space, some do not; a group that happens to
    # agree is counted, never the whole run
    text = " ".join(_run(ws, reward="regex", pattern="^[^ ]", temperature=1.5).split())
    assert "so the run taught the model nothing" not in text
    assert "in every group" not in text
