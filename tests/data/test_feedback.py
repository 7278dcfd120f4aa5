"""`llmkit data from-feedback`: real registry feedback rows in, a registered chat dataset out.

Selection (corrections win, approvals kept, the rest skipped by reason, latest wins, completion
prompts, request-log lookup), the dataset records as sft reads them, tiny sets, lineage, the
nothing-usable error, the CLI, and a short sft run on the result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmkit.config import FeedbackDataConfig, LoraConfig, SftConfig
from llmkit.data.feedback import dataset_from_feedback, select
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train.supervised import sft
from llmkit.workspace import Workspace

SYSTEM = {"role": "system", "content": "You answer in one short line."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


class Env:
    def __init__(self, root: Path):
        self.ws = Workspace.open(root)
        self.registry = Registry.for_workspace(self.ws.root)

    def chat(self, rid: str, messages: list[dict] | None, response: str | None, *, rating=None, correction=None,
             model: str = "tiny-lm") -> None:
        self.registry.add_feedback(model, response_id=rid, rating=rating, correction=correction, response=response,
                                   prompt=json.dumps(messages) if messages is not None else None,
                                   extra={"kind": "feedback", "endpoint": "chat"})

    def log(self, rid: str, prompt: str, response: str, endpoint: str = "chat", model: str = "tiny-lm") -> None:
        self.registry.add_feedback(model, response_id=rid, prompt=prompt, response=response,
                                   extra={"kind": "request", "endpoint": endpoint})

    def build(self, **cfg) -> object:
        return dataset_from_feedback(FeedbackDataConfig(**{"name": "fb", **cfg}), self.ws, self.registry)


def conversations(ds) -> list[list[dict]]:
    return [r["messages"] for split in ("train", "val", "test") for r in ds.records(split)]


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path / "ws")


@pytest.fixture
def mixed(env: Env) -> Env:
    """One row of every kind the server writes."""
    env.chat("chatcmpl-a1", [SYSTEM, user("What is the capital of France?")], "Paris is the capital.", rating=1)
    env.chat("chatcmpl-b2", [user("Two plus two?")], "Five, surely.", rating=-1, correction="Two plus two is four.")
    env.chat("chatcmpl-c3", [user("Name a colour of the sky.")], "Potato.", rating=-1)
    env.chat("chatcmpl-d4", [user("Say something kind.")], "You are doing well.")  # unrated
    # Rated twice: the latest feedback wins, either way round.
    env.chat("chatcmpl-e5", [user("Who wrote Hamlet?")], "William Shakespeare wrote it.", rating=-1)
    env.chat("chatcmpl-e5", [user("Who wrote Hamlet?")], "William Shakespeare wrote it.", rating=1)
    env.chat("chatcmpl-f6", [user("Is water wet?")], "Only on Tuesdays.", rating=1)
    env.chat("chatcmpl-f6", [user("Is water wet?")], "Only on Tuesdays.", rating=-1)
    env.registry.add_feedback("tiny-lm", response_id="cmpl-g7", prompt="Once upon a time", response=" there was a king.",
                              rating=1, extra={"kind": "feedback", "endpoint": "completion"})
    # The server forgot this response: its request log has the text.
    env.log("chatcmpl-h8", json.dumps([user("How many legs has a spider?")]), "A spider has eight legs.")
    env.chat("chatcmpl-h8", None, None, rating=1)
    env.chat("chatcmpl-i9", None, None, rating=1)  # forgotten and never logged
    env.registry.add_feedback("tiny-lm", response_id="chatcmpl-j0", prompt="not json", response="Hi.", rating=1,
                              extra={"kind": "feedback", "endpoint": "chat"})
    env.log("chatcmpl-k1", json.dumps([user("Unrated request")]), "Only logged, never rated.")
    return env


EXPECTED = [
    [SYSTEM, user("What is the capital of France?"), bot("Paris is the capital.")],
    [user("Two plus two?"), bot("Two plus two is four.")],
    [user("Who wrote Hamlet?"), bot("William Shakespeare wrote it.")],
    [user("Once upon a time"), bot(" there was a king.")],
    [user("How many legs has a spider?"), bot("A spider has eight legs.")],
]


def test_corrections_and_approvals_become_the_dataset_and_the_rest_is_counted(mixed: Env):
    ds = mixed.build()
    fb = ds.manifest["feedback"]
    assert fb["used"] == {"corrected": 1, "approved": 4}
    assert fb["skipped"] == {"superseded": 2, "below_min_rating": 2, "unrated": 1, "not_stored": 1, "malformed": 1}
    assert fb["feedback_rows"] == 12 and fb["request_logs"] == 2
    assert "chatcmpl-j0" in fb["bad_examples"][0] and "not JSON" in fb["bad_examples"][0]
    # The records as sft reads them (prepare writes keys in its own order).
    got = sorted(json.dumps(c, sort_keys=True) for c in conversations(ds))
    assert got == sorted(json.dumps(c, sort_keys=True) for c in EXPECTED)
    assert ds.manifest["task"] == "chat" and ds.manifest["tokenizer"]["spec"] == "char"  # tiny-lm is not registered here
    sources = {r["source"].rsplit(":", 1)[0] for split in ("train", "val") for r in ds.records(split)}
    assert sources and all(Path(s).is_file() for s in sources), sources  # the export is kept (it was a deleted temp file)
    rec = mixed.registry.get("fb", "dataset")
    assert rec.kind == "chat" and rec.metrics["feedback"]["used"] == {"corrected": 1, "approved": 4}


def test_the_same_feedback_again_finds_the_same_version(mixed: Env):
    first = mixed.build()
    again = mixed.build()
    assert again.existed and (again.id, again.version) == (first.id, 1)
    mixed.chat("chatcmpl-new", [user("One more question?")], "One more answer.", rating=1)
    assert mixed.build().version == 2


def test_options_change_what_counts(mixed: Env):
    rows = mixed.registry.list_feedback()
    convs, summary = select(rows, min_rating=1, include_corrections=False)
    assert summary["used"] == {"corrected": 0, "approved": 4} and summary["skipped"]["corrections_excluded"] == 1
    convs, summary = select(rows, min_rating=-1, include_corrections=False)
    assert summary["used"] == {"corrected": 0, "approved": 7}  # thumbs-down kept as they were, b2's answer too
    assert [user("Two plus two?"), bot("Five, surely.")] in [c["messages"] for c in convs]
    convs, summary = select(rows, min_rating=-1)
    assert summary["used"] == {"corrected": 1, "approved": 6}


def test_since_keeps_later_feedback_only(env: Env):
    env.chat("chatcmpl-old", [user("Old question?")], "Old answer.", rating=1)
    time.sleep(0.05)
    cut = time.time()
    env.chat("chatcmpl-new", [user("New question?")], "New answer.", rating=1)
    convs, summary = select(env.registry.list_feedback(), since=cut)
    assert [c["response_id"] for c in convs] == ["chatcmpl-new"] and summary["skipped"] == {"before_since": 1}
    assert env.build(since="2000-01-01").manifest["feedback"]["used"]["approved"] == 2
    with pytest.raises(UserError, match=r"^no usable feedback: 2 feedback rows seen.*2 given before --since"):
        env.build(since="2999-01-01T00:00:00+00:00")
    with pytest.raises(UserError, match=r"from-feedback.since = 'yesterday': not an ISO date"):
        env.build(since="yesterday")


def test_nothing_usable_says_what_was_seen_why_it_was_skipped_and_how_to_get_some(env: Env):
    with pytest.raises(UserError, match=r"^no feedback in the registry; rate or correct .*POST /v1/feedback"):
        env.build()
    env.chat("chatcmpl-1", [user("Hello?")], "Bad answer.", rating=-1)
    env.chat("chatcmpl-2", [user("Hello again?")], "Another bad answer.", rating=-1)
    env.chat("chatcmpl-3", [user("Anyone?")], "Nobody rated this.")
    with pytest.raises(UserError) as err:
        env.build()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("no usable feedback: 3 feedback rows seen, none approved (rating >= 1) or corrected")
    assert "2 rated below --min-rating without a correction; 1 neither rated nor corrected" in message
    assert "web UI" in message and "POST /v1/feedback" in message
    with pytest.raises(UserError, match=r"no feedback on model 'other' in the registry \(models with feedback: tiny-lm\)"):
        env.build(model="other")
    assert env.registry.list("dataset") == []


def test_a_tiny_set_works_and_train_is_never_empty(env: Env):
    env.chat("chatcmpl-1", [user("Where do cats sleep?")], "Anywhere warm.", rating=1)
    env.chat("chatcmpl-2", [user("Why is the sea salty?")], "Rivers carry salt into it.", rating=-1, correction="Rocks.")
    env.registry.add_feedback("tiny-lm", response_id="cmpl-3", prompt="The moon is", response=" made of rock.", rating=1,
                              extra={"kind": "feedback", "endpoint": "completion"})
    ds = env.build()
    splits = ds.manifest["splits"]
    assert splits["train"]["records"] >= 1 and sum(s["records"] for s in splits.values()) == 3
    # Almost everything would hash into val: the records stay in train rather than prepare failing.
    one = Env(env.ws.root.parent / "one")
    one.chat("chatcmpl-9", [user("Only one?")], "Only one.", rating=1)
    ds = one.build(val=0.99)
    assert ds.manifest["splits"]["train"]["records"] == 1 and ds.manifest["options"]["splits"]["val"] == 0.0


# -- with the tiny model registered: tokenizer, lineage, sft -----------------------------------------


@pytest.fixture
def model_env(tmp_path, lm_workspace: Path, tiny_model) -> Env:
    """A fresh workspace with the session's tiny-lm registered in it, so feedback rows stay local."""
    env = Env(tmp_path / "model-ws")
    src = Registry.for_workspace(lm_workspace).get("tiny-lm", "model")
    env.registry.add("model", "tiny-lm", kind=src.kind, path=src.path, params=src.params, metrics=src.metrics)
    return env


TOPICS = ["apples", "rivers", "castles", "kings", "ships", "clocks", "gardens", "bridges", "candles", "horses",
          "winters", "storms"]


def test_model_tokenizer_lineage_and_sft_on_the_result(model_env: Env):
    for n, topic in enumerate(TOPICS):
        rating, correction = (1, None) if n % 3 else (-1, f"Tell me true things about {topic}, good sir.")
        model_env.chat(f"chatcmpl-{n:04x}", [user(f"What do you know of {topic}?")], f"Much about {topic}, my lord.",
                       rating=rating, correction=correction)
    ds = model_env.build(name="tiny-feedback", model="tiny-lm", val=0.3)
    model = model_env.registry.get("tiny-lm", "model")
    assert ds.manifest["tokenizer"]["spec"] == model.path  # the model's own tokenizer
    assert ds.manifest["feedback"]["used"] == {"corrected": 4, "approved": 8}
    assert [(rel, p.id) for rel, p in model_env.registry.parents(ds.id)] == [("feedback", model.id)]
    assert model_env.build(name="tiny-feedback", model="tiny-lm", val=0.3).existed
    assert len(model_env.registry.parents(ds.id)) == 1  # linking again adds nothing
    splits = ds.manifest["splits"]
    assert splits["train"]["records"] > 0 and splits["val"]["records"] > 0, splits

    cfg = SftConfig(base="tiny-lm", data="tiny-feedback", name="tiny-lm-fb", max_steps=2, batch_size=4, max_length=160,
                    lr=5e-3, eval_every=2, checkpoint_every=2, seed=3, lora=LoraConfig(r=4, alpha=8))
    tuned = sft(cfg, model_env.ws, model_env.registry)
    assert model_env.registry.get("tiny-lm-fb", "model").id == tuned.id and Path(tuned.path).is_dir()


# -- CLI ----------------------------------------------------------------------------------------------


def test_cli_nothing_usable_is_exit_2_with_one_line(env: Env):
    env.chat("chatcmpl-1", [user("Hello?")], "Bad answer.", rating=-1)
    out = run_cli("data", "from-feedback", "--name", "fb", workspace=env.ws.root)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no usable feedback: 1 feedback rows seen"), out.stderr
    missing = run_cli("data", "from-feedback", workspace=env.ws.root)
    assert missing.returncode == 2 and "--name" in missing.stderr


def test_cli_prints_the_dataset(mixed: Env):
    out = run_cli("data", "from-feedback", "--name", "fb", "--model", "tiny-lm", "--json", workspace=mixed.ws.root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ref"] == "fb:v1" and result["used"] == {"corrected": 1, "approved": 4}
    assert result["skipped"]["unrated"] == 1 and result["counts"]["kept"] == 5
    human = run_cli("data", "from-feedback", "--name", "fb", "--no-include-corrections", workspace=mixed.ws.root)
    assert human.returncode == 0, human.stderr
    assert "dataset fb:v2 (chat)" in human.stdout and "0 corrected, 4 approved" in human.stdout
    assert "next: llmkit train sft" in human.stdout


def test_a_failed_export_leaves_no_file_of_users_text_behind(mixed: Env):
    """A bad --tokenizer was found after the export (users' prompts and answers) was written, and named data.tokenizer."""
    exports = mixed.ws.root / "datasets" / "feedback-exports"
    before = set(exports.iterdir()) if exports.exists() else set()
    with pytest.raises(UserError, match=r"^from-feedback.tokenizer = '/nonexistent': no tokenizer.json"):
        mixed.build(tokenizer="/nonexistent")
    broken = mixed.ws.root / "broken.json"  # passes the early check, fails inside prepare: removed all the same
    broken.write_text("{not json")
    with pytest.raises(UserError, match=r"not a tokenizers tokenizer.json"):
        mixed.build(tokenizer=str(broken))
    assert (set(exports.iterdir()) if exports.exists() else set()) == before
