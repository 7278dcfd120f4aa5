"""`llmkit data from-feedback --task preference`: real registry feedback rows in, a registered preference
dataset out, read back the way the DPO/ORPO/KTO trainers read it (`open_dataset(...).records("train")`).

A correction is chosen over the answer it corrects, a thumbs-up over a thumbs-down answer to the same
prompt; lone ratings become KTO records; the rest is counted by reason; lineage to the served models;
the CLI's JSON and its one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmkit.config import FeedbackDataConfig
from llmkit.data.dataset import open_dataset
from llmkit.data.feedback import dataset_from_feedback
from llmkit.data.feedback_preference import select_preference
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SYSTEM = {"role": "system", "content": "You answer in one short line."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


class Env:
    def __init__(self, root: Path):
        self.ws = Workspace.open(root)
        self.registry = Registry.for_workspace(self.ws.root)

    def chat(self, rid: str, messages: list[dict] | None, response: str | None, *, rating=None, correction=None,
             model: str = "tiny-lm") -> None:
        self.registry.add_feedback(model, response_id=rid, rating=rating, correction=correction, response=response,
                                   prompt=json.dumps(messages) if messages is not None else None,
                                   extra={"kind": "feedback", "endpoint": "chat"})

    def log(self, rid: str, messages: list[dict], response: str, model: str = "tiny-lm") -> None:
        self.registry.add_feedback(model, response_id=rid, prompt=json.dumps(messages), response=response,
                                   extra={"kind": "request", "endpoint": "chat"})

    def build(self, **cfg):
        return dataset_from_feedback(FeedbackDataConfig(**{"name": "pref", "task": "preference", "val": 0.0, **cfg}),
                                     self.ws, self.registry)


def records(registry: Registry, ref: str) -> list[str]:
    """Every record of the dataset as the trainers read it, as sorted JSON lines (source left out)."""
    ds = open_dataset(registry, ref)
    out = [{k: v for k, v in r.items() if k != "source"} for split in ("train", "val", "test") for r in ds.records(split)]
    return sorted(json.dumps(r, sort_keys=True) for r in out)


def lines(*recs: dict) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in recs)


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path / "ws")


@pytest.fixture
def mixed(env: Env) -> Env:
    """Each way feedback becomes a record, and each reason one is skipped."""
    fr, two, sky = [SYSTEM, user("What is the capital of France?")], [user("Two plus two?")], [user("Colour of the sky?")]
    env.chat("chatcmpl-c1", two, "Five, surely.", rating=-1, correction="Two plus two is four.")
    # Corrected with a thumbs-up still prefers the correction; the answer comes from the request log.
    env.log("chatcmpl-c2", [user("Who wrote Hamlet?")], "Marlowe did.")
    env.chat("chatcmpl-c2", None, None, rating=1, correction="Shakespeare wrote Hamlet.")
    env.chat("chatcmpl-c3", sky, "Blue.", correction="  Blue. ")  # the same once cleaned: no pair
    # Up and down to one prompt (the second spaced differently, the same once cleaned), two served models.
    env.chat("chatcmpl-r1", fr, "Paris is the capital.", rating=1)
    env.chat("chatcmpl-r2", [SYSTEM, user("What is the  capital of France? ")], "Lyon, I think.", rating=-1,
             model="tiny-lm-v2")
    env.chat("chatcmpl-r3", fr, "It is Paris.", rating=1)  # a second thumbs-up finds no partner: KTO
    env.chat("chatcmpl-k1", [user("Is water wet?")], "Only on Tuesdays.", rating=-1)  # lone: KTO false
    # One answer text rated both ways for one prompt: no preference either way.
    env.chat("chatcmpl-b1", [user("Best pet?")], "A cat.", rating=1)
    env.chat("chatcmpl-b2", [user("Best pet?")], "A cat.", rating=-1)
    # Rated again: the latest (thumbs-up) wins, the older one is superseded.
    env.chat("chatcmpl-s1", [user("Say hello.")], "Hello!", rating=-1)
    env.chat("chatcmpl-s1", [user("Say hello.")], "Hello!", rating=1)
    env.chat("chatcmpl-u1", [user("Anyone?")], "Nobody rated this.")  # unrated
    env.chat("chatcmpl-n1", None, None, correction="A correction of nothing we know.")  # not stored
    env.registry.add_feedback("tiny-lm", response_id="chatcmpl-m1", prompt="not json", response="Hi.", rating=1,
                              extra={"kind": "feedback", "endpoint": "chat"})  # malformed
    return env


EXPECTED = [
    {"prompt": [user("Two plus two?")], "chosen": "Two plus two is four.", "rejected": "Five, surely."},
    {"prompt": [user("Who wrote Hamlet?")], "chosen": "Shakespeare wrote Hamlet.", "rejected": "Marlowe did."},
    {"prompt": [SYSTEM, user("What is the capital of France?")], "chosen": "Paris is the capital.",
     "rejected": "Lyon, I think."},
    {"prompt": [SYSTEM, user("What is the capital of France?")], "completion": "It is Paris.", "label": True},
    {"prompt": [user("Is water wet?")], "completion": "Only on Tuesdays.", "label": False},
    {"prompt": [user("Say hello.")], "completion": "Hello!", "label": True},
]
USED = {"pairs_from_corrections": 2, "pairs_from_ratings": 1, "unpaired_true": 2, "unpaired_false": 1}
SKIPPED = {"superseded": 1, "unrated": 1, "not_stored": 1, "malformed": 1, "correction_unchanged": 1,
           "rated_both_ways": 2}


def test_corrections_and_opposite_ratings_make_pairs_and_lone_ratings_kto_records(mixed: Env):
    ds = mixed.build()
    assert ds.manifest["task"] == "preference"
    assert records(mixed.registry, "pref") == lines(*EXPECTED)
    fb = ds.manifest["feedback"]
    assert fb["used"] == USED and fb["skipped"] == SKIPPED
    assert fb["feedback_rows"] == 14 and fb["request_logs"] == 1
    assert "chatcmpl-m1" in fb["bad_examples"][0] and "not JSON" in fb["bad_examples"][0]
    # What prepare kept, as `data report` shows it: nothing lost in cleaning or dedupe.
    assert {k: ds.manifest["preference"][k] for k in ("pairs", "unpaired_true", "unpaired_false")} == {
        "pairs": 3, "unpaired_true": 2, "unpaired_false": 1}
    rec = mixed.registry.get("pref", "dataset")
    assert rec.kind == "preference" and rec.metrics["feedback"]["used"] == USED
    assert mixed.build().existed  # the same feedback finds the same version


def test_options_and_pairing_rules(env: Env):
    q = [user("Name a fruit.")]
    env.chat("chatcmpl-1", q, "An apple.", rating=1)
    env.chat("chatcmpl-2", q, "A carrot.", rating=-1, correction="A banana.")
    env.chat("chatcmpl-3", q, "A potato.", rating=-1)
    env.chat("chatcmpl-4", q, "A pear.", rating=1)
    env.chat("chatcmpl-5", q, "A rock.", rating=0)  # neutral: not at --min-rating 1, so a thumbs-down
    rows = env.registry.list_feedback()
    picks, summary = select_preference(rows)
    assert summary["used"] == {"pairs_from_corrections": 1, "pairs_from_ratings": 2, "unpaired_true": 0,
                               "unpaired_false": 0}
    # Matched oldest first, one answer in one pair only.
    assert [(p["record"]["chosen"], p["record"]["rejected"]) for p in picks] == [
        ("A banana.", "A carrot."), ("An apple.", "A potato."), ("A pear.", "A rock.")]
    # Without corrections the corrected answer's thumbs-down joins the ratings; a correction alone is skipped.
    env.chat("chatcmpl-6", [user("Other?")], "Other.", correction="Another.")
    picks, summary = select_preference(env.registry.list_feedback(), include_corrections=False)
    assert summary["used"] == {"pairs_from_corrections": 0, "pairs_from_ratings": 2, "unpaired_true": 0,
                               "unpaired_false": 1}
    assert summary["skipped"] == {"corrections_excluded": 1}
    # --min-rating 0 counts the neutral answer as desirable.
    _, summary = select_preference(rows, min_rating=0)
    assert summary["used"]["pairs_from_ratings"] == 1 and summary["used"]["unpaired_true"] == 2


def test_every_answer_to_one_long_prompt_survives_prepare(env: Env):
    """Records of one prompt differ only in short answers: not near-duplicates of each other here."""
    question = [user("A long question about the Roman empire and its emperors, its wars and roads. " * 4
                     + "Was Augustus the first emperor?")]
    env.chat("chatcmpl-1", question, "Yes.", rating=1)
    env.chat("chatcmpl-2", question, "No.", rating=-1)
    env.chat("chatcmpl-3", question, "Yes, in 27 BC.", rating=1)
    env.chat("chatcmpl-4", question, "Yes, in 27 BC.", rating=1)  # the same KTO record twice: exact dedupe drops one
    env.chat("chatcmpl-5", question, "Nero.", rating=-1, correction="Augustus, yes.")
    ds = env.build()
    assert ds.manifest["feedback"]["used"] == {"pairs_from_corrections": 1, "pairs_from_ratings": 1,
                                               "unpaired_true": 2, "unpaired_false": 0}
    assert records(env.registry, "pref") == lines(
        {"prompt": question, "chosen": "Augustus, yes.", "rejected": "Nero."},
        {"prompt": question, "chosen": "Yes.", "rejected": "No."},
        {"prompt": question, "completion": "Yes, in 27 BC.", "label": True})
    assert ds.manifest["counts"]["duplicates_exact"] == 1 and ds.manifest["counts"]["duplicates_near"] == 0


def test_lineage_to_every_served_model_the_records_came_from(mixed: Env, tmp_path):
    ids = {}
    for name in ("tiny-lm", "tiny-lm-v2", "never-served"):
        folder = tmp_path / name
        folder.mkdir()
        ids[name] = mixed.registry.add("model", name, kind="lm", path=folder).id
    ds = mixed.build()
    assert ds.manifest["feedback"]["models"] == ["tiny-lm", "tiny-lm-v2"]
    assert sorted((rel, p.id) for rel, p in mixed.registry.parents(ds.id)) == sorted(
        [("feedback", ids["tiny-lm"]), ("feedback", ids["tiny-lm-v2"])])


def test_nothing_usable_names_the_reasons(env: Env):
    env.chat("chatcmpl-1", [user("Hello?")], "Hello.", correction="Hello.")
    env.chat("chatcmpl-2", [user("Anyone?")], "Nobody rated this.")
    with pytest.raises(UserError) as err:
        env.build()
    message = str(err.value)
    assert "\n" not in message and message.startswith("no usable feedback: 2 feedback rows seen, none rated or corrected")
    assert "1 neither rated nor corrected; 1 corrections identical to the answer they correct" in message
    assert env.registry.list("dataset") == []


# -- CLI ----------------------------------------------------------------------------------------------


def test_cli_prints_the_counts(mixed: Env):
    out = run_cli("data", "from-feedback", "--task", "preference", "--name", "pref", "--val", "0", "--json",
                  workspace=mixed.ws.root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ref"] == "pref:v1" and result["task"] == "preference"
    assert result["used"] == USED and result["skipped"] == SKIPPED
    assert (result["preference"]["pairs"], result["preference"]["unpaired_true"]) == (3, 2)
    assert records(Registry.for_workspace(mixed.ws.root), "pref") == lines(*EXPECTED)


def test_cli_human_output_and_nothing_usable_is_exit_2_with_one_line(mixed: Env, tmp_path):
    human = run_cli("data", "from-feedback", "--task", "preference", "--name", "pref", workspace=mixed.ws.root)
    assert human.returncode == 0, human.stderr
    text = " ".join(human.stdout.split())  # rich wraps lines at the terminal's width
    assert "dataset pref:v1 (preference)" in text
    assert "pairs from corrections 2, from ratings 1; lone ratings as KTO records 2 up, 1 down" in text
    assert "preference: 3 pairs, 2 unpaired true, 1 unpaired false" in text
    assert "lineage" not in text  # no model of that name is registered here
    assert "next: llmkit train dpo --base MODEL --data pref" in text
    # --model names the one that answered when the registry has no lineage for it (a built-in, a served name)
    one = run_cli("data", "from-feedback", "--task", "preference", "--name", "pref-one", "--model", "tiny-lm",
                  workspace=mixed.ws.root)
    assert one.returncode == 0, one.stderr
    assert "--base tiny-lm --data pref-one" in " ".join(one.stdout.split()), one.stdout
    empty = Env(tmp_path / "empty")
    empty.chat("chatcmpl-1", [user("Hello?")], "Unrated answer.")
    out = run_cli("data", "from-feedback", "--task", "preference", "--name", "pref", workspace=empty.ws.root)
    assert out.returncode == 2, out.stderr
    lines_ = out.stderr.strip().splitlines()
    assert len(lines_) == 1 and lines_[0].startswith("error: no usable feedback: 1 feedback rows seen"), out.stderr
