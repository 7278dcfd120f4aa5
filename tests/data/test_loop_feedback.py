"""`data from-feedback` on feedback a server gave under another name than the model's: `llmkit serve prod` (an alias
moved by `llmkit promote`) records the served name "prod" and the model's registry ref in `model_ref`. The dataset's
lineage goes to that model (it went nowhere: no model is called "prod"), for the chat and the preference task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import FeedbackDataConfig
from llmkit.data.feedback import dataset_from_feedback
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def _feedback(registry: Registry, rid: str, question: str, answer: str, *, served: str, model_ref: str, **given) -> None:
    """What `serve --log-requests` and `POST /v1/feedback` store: a request log, then the feedback row."""
    prompt = json.dumps([{"role": "user", "content": question}])
    registry.add_feedback(served, response_id=rid, prompt=prompt, response=answer,
                          extra={"kind": "request", "endpoint": "chat", "model_ref": model_ref})
    registry.add_feedback(served, response_id=rid, prompt=prompt, response=answer,
                          extra={"kind": "feedback", "endpoint": "chat", "comment": None, "model_ref": model_ref},
                          **given)


@pytest.fixture
def env(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    ids = {}
    for name in ("chat-dpo", "chat-dpo"):  # two versions: the alias pointed at v1 when these answers were written
        folder = tmp_path / f"{name}-{len(ids)}"
        folder.mkdir()
        ids[len(ids) + 1] = registry.add("model", name, kind="lm", path=folder).id
    _feedback(registry, "chatcmpl-1", "Largest planet?", "Neptune.", served="prod", model_ref="chat-dpo:v1",
              rating=-1, correction="Jupiter.")
    _feedback(registry, "chatcmpl-2", "Say hi.", "Hi!", served="prod", model_ref="chat-dpo:v1", rating=1)
    _feedback(registry, "chatcmpl-3", "Say hi.", "Go away.", served="prod", model_ref="chat-dpo:v1", rating=-1)
    return ws, registry, ids


@pytest.mark.parametrize("task", ["chat", "preference"])
def test_lineage_goes_to_the_model_that_wrote_the_answers_not_the_served_alias(env, task):
    ws, registry, ids = env
    ds = dataset_from_feedback(FeedbackDataConfig(name=f"fb-{task}", task=task, val=0.0, model="prod"), ws, registry)
    assert ds.manifest["feedback"]["models"] == ["chat-dpo:v1"]
    assert [(rel, parent.id) for rel, parent in registry.parents(ds.id)] == [("feedback", ids[1])]


def test_an_answer_approved_in_one_response_and_rated_down_in_another_is_no_sft_reply(tmp_path: Path):
    """Greedy decoding gives every user the same answer; two users who disagree on it leave it contested, as the
    preference path already said: neither approved nor paired. The chat path took it as approved."""
    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    for rid, rating, answer in (("chatcmpl-1", 1, "Cold."), ("chatcmpl-2", -1, "Cold. "), ("chatcmpl-3", 1, "Warm.")):
        _feedback(registry, rid, "Opposite of hot?", answer, served="smollm2-135m", model_ref="smollm2-135m",
                  rating=rating)
    _feedback(registry, "chatcmpl-4", "Say hi.", "Hi!", served="smollm2-135m", model_ref="smollm2-135m", rating=1)
    ds = dataset_from_feedback(FeedbackDataConfig(name="fb", val=0.0), ws, registry)
    replies = sorted(r["messages"][-1]["content"] for r in ds.records("train"))
    assert replies == ["Hi!", "Warm."]
    assert ds.manifest["feedback"]["used"] == {"corrected": 0, "approved": 2}
    assert ds.manifest["feedback"]["skipped"] == {"below_min_rating": 1, "rated_both_ways": 1}
