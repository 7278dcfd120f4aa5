"""`llmkit data prepare --task preference` on small JSONL files written here: the layouts read, the records
kept, the counts in the manifest, and bad rows stopped with file:line and nothing left behind.

Real files, the real pipeline and a real SQLite registry in tmp_path; no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmkit.cli import main
from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SPLITS = ("train", "val", "test")

# The three answer layouts of an explicit prompt, an HH-style and an UltraFeedback-style pair, and KTO ratings.
EXPLICIT = {"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Purple."}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
            "chosen": "Paris.", "rejected": "Lyon."}
TRL_CONVERSATIONAL = {"prompt": [{"role": "user", "content": "2 + 2?"}],
                      "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
HH = {"chosen": "\n\nHuman: What is a cat?\n\nAssistant: A small animal.\n\nHuman: Do cats purr?\n\nAssistant: Yes, they purr when content.",
      "rejected": "\n\nHuman: What is a cat?\n\nAssistant: A small animal.\n\nHuman: Do cats purr?\n\nAssistant: I don't know."}
ULTRAFEEDBACK = {
    "prompt": "Write a haiku about rain.", "prompt_id": "a1b2",
    "chosen": [{"role": "user", "content": "Write a haiku about rain."},
               {"role": "assistant", "content": "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"}],
    "rejected": [{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "Rain is wet."}],
    "messages": [{"role": "user", "content": "Write a haiku about rain."},
                 {"role": "assistant", "content": "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"}],
    "score_chosen": 8.5, "score_rejected": 3.0,
}
KTO_GOOD = {"prompt": "Say hello politely.", "completion": "Hello, nice to meet you.", "label": True}
KTO_BAD = {"prompt": "Say hello politely.", "completion": "What do you want?", "label": False}


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.ws = Workspace.open(root / "ws")
        self.registry = Registry.for_workspace(self.ws.root)

    def write(self, name: str, rows: list) -> Path:
        path = self.root / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
        return path

    def prepare(self, path: Path, **options):
        options = {"task": "preference", "tokenizer": "char", "name": "prefs", **options}
        return prepare(DataConfig(inputs=[str(path)], **options), self.ws, self.registry)

    def records(self, ds) -> list[dict]:
        return [r for s in SPLITS for r in ds.records(s)]


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path)


def llmkit(capsys, monkeypatch, workspace: Path, *args: str) -> str:
    """The CLI's main() in this process (a process start costs ~3 s), its stdout; fails on a non-zero exit."""
    monkeypatch.setenv("LLMKIT_HOME", str(workspace))
    monkeypatch.setattr("sys.argv", ["llmkit", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return out.out


def by_source(records: list[dict], path: Path, line: int) -> dict:
    return next(r for r in records if r["source"] == f"{path}:{line}")


def test_every_layout_becomes_a_prompt_with_chosen_and_rejected_or_a_rated_completion(env):
    path = env.write("prefs.jsonl", [EXPLICIT, MESSAGES, TRL_CONVERSATIONAL, HH, ULTRAFEEDBACK, KTO_GOOD, KTO_BAD])
    ds = env.prepare(path)
    recs = env.records(ds)
    assert len(recs) == 7 and ds.kind == "preference"

    assert by_source(recs, path, 1) == {"prompt": [{"role": "user", "content": "Name a primary colour."}],
                                        "chosen": "Red.", "rejected": "Purple.", "source": f"{path}:1"}
    assert by_source(recs, path, 2)["prompt"] == MESSAGES["messages"]
    assert (by_source(recs, path, 3)["chosen"], by_source(recs, path, 3)["rejected"]) == ("4", "5")

    hh = by_source(recs, path, 4)  # the shared turns are the prompt, the last assistant turns the answers
    assert hh["prompt"] == [{"role": "user", "content": "What is a cat?"}, {"role": "assistant", "content": "A small animal."},
                            {"role": "user", "content": "Do cats purr?"}]
    assert (hh["chosen"], hh["rejected"]) == ("Yes, they purr when content.", "I don't know.")

    uf = by_source(recs, path, 5)
    assert uf["prompt"] == [{"role": "user", "content": "Write a haiku about rain."}]
    assert uf["chosen"].startswith("Soft rain on the roof\n") and uf["rejected"] == "Rain is wet."

    good, bad = by_source(recs, path, 6), by_source(recs, path, 7)
    assert (good["completion"], good["label"], bad["label"]) == ("Hello, nice to meet you.", True, False)
    assert "chosen" not in good

    counts = ds.manifest["preference"]
    assert (counts["pairs"], counts["unpaired_true"], counts["unpaired_false"]) == (5, 1, 1)
    assert sum(s["pairs"] for s in counts["splits"].values()) == 5
    assert counts["skipped"] == {}
    assert ds.manifest["splits"]["train"]["tokens"] > 0


def test_ultrafeedback_parquet_is_read_whole_rows_with_message_lists(env):
    import pyarrow as pa
    import pyarrow.parquet as pq

    second = {**ULTRAFEEDBACK, "prompt": "Say hi.", "prompt_id": "c3",
              "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
              "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}]}
    path = env.root / "train_prefs-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([ULTRAFEEDBACK, second]), path)
    recs = env.records(env.prepare(path))
    assert sorted((r["prompt"][0]["content"], r["chosen"], r["rejected"]) for r in recs) == [
        ("Say hi.", "Hi!", "No."), ("Write a haiku about rain.", ULTRAFEEDBACK["chosen"][1]["content"], "Rain is wet.")]


def test_records_of_one_prompt_land_in_one_split(env):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.{j}", "rejected": f"Bad answer {i}.{j} " + "x" * j}
            for i in range(30) for j in range(3)]
    ds = env.prepare(env.write("many.jsonl", rows), dedupe="exact", splits={"val": 0.2, "test": 0.2})
    split_of: dict[str, set[str]] = {}
    for split in SPLITS:
        for rec in ds.records(split):
            split_of.setdefault(rec["prompt"][0]["content"], set()).add(split)
    assert len(split_of) == 30
    assert all(len(splits) == 1 for splits in split_of.values())
    assert len({s for splits in split_of.values() for s in splits}) == 3  # and the prompts do spread over the splits


LONG_CHOSEN = ("Photosynthesis is how green plants turn light into food: in their leaves, chlorophyll takes up "
               "sunlight, and with it the plant makes sugar from water and carbon dioxide, giving off oxygen as it goes. "
               "The sugar is the plant's food: it burns some of it for energy and builds the rest into new leaves, stems "
               "and roots. The oxygen goes out into the air through tiny holes under the leaves, and that is the air "
               "that you and every animal breathe, so each time you see a tree you can thank it for your next breath.")


def test_pairs_rejecting_different_answers_are_kept_and_a_near_copy_of_a_pair_is_not(env):
    prompt = "Explain photosynthesis in one or two sentences for a ten year old who likes plants."
    rejected = ["Plants eat dirt.", "It is a kind of music.", "I don't know, ask a teacher."]
    rows = [{"prompt": prompt, "chosen": LONG_CHOSEN, "rejected": r} for r in rejected]
    rows.append({"prompt": prompt, "chosen": LONG_CHOSEN.replace("green plants", "plants"), "rejected": rejected[0]})
    ds = env.prepare(env.write("pairs.jsonl", rows))  # dedupe near, threshold 0.85: the defaults
    kept = sorted(r["rejected"] for r in env.records(ds))
    # One signature over prompt + chosen + rejected made the first three near-duplicates of each other (the
    # shared prompt and chosen answer outweigh the rejected one); the fourth is the first with one word less.
    assert kept == sorted(rejected)
    assert ds.manifest["counts"]["duplicates_near"] == 1


BAD_ROWS = [
    ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello."}, "'chosen' equals 'rejected'"),
    ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello.  "}, "'chosen' equals 'rejected'"),  # equal once cleaned
    ({"prompt": "Hi?", "chosen": "   ", "rejected": "Hello."}, "empty 'chosen' answer"),
    ({"prompt": "Hi?", "completion": "", "label": True}, "empty 'completion'"),
    ({"chosen": "Hello.", "rejected": "Go away."}, "neither 'prompt' nor 'messages'"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hey\n\nAssistant: Go away."},
     "differ before their last assistant turn"),
    ({"prompt": "Hi?", "completion": "Hello.", "label": "maybe"}, "is not true or false"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_a_bad_row_stops_prepare_at_its_line_and_leaves_nothing(env, row, message):
    path = env.write("bad.jsonl", [EXPLICIT, KTO_GOOD, row, KTO_BAD])
    with pytest.raises(UserError) as err:
        env.prepare(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not list((env.ws.root / "datasets").glob("*")) if (env.ws.root / "datasets").exists() else True
    assert env.registry.list("dataset") == []


def test_skip_bad_counts_the_skipped_rows_by_reason_and_the_cli_reports_them(env, capsys, monkeypatch):
    rows = [EXPLICIT, HH, KTO_GOOD, KTO_BAD, '{"prompt": "broken', *[row for row, _ in BAD_ROWS], EXPLICIT]
    path = env.write("mixed.jsonl", rows)
    ds = env.prepare(path, skip_bad=True, dedupe="exact")
    counts = ds.manifest["preference"]
    assert (counts["pairs"], counts["unpaired_true"], counts["unpaired_false"]) == (2, 1, 1)
    assert counts["skipped"] == {"bad_label": 1, "chosen_equals_rejected": 2, "duplicates": 1, "empty_completion": 2,
                                 "invalid": 1, "no_prompt": 1, "prompts_differ": 1}

    report = llmkit(capsys, monkeypatch, env.ws.root, "data", "report", "prefs", "--json")
    assert json.loads(report)["preference"]["skipped"] == counts["skipped"]
    human = " ".join(llmkit(capsys, monkeypatch, env.ws.root, "data", "report", "prefs").split())  # unwrapped
    assert "preference: 2 pairs, 1 unpaired true, 1 unpaired false; skipped: bad_label 1, chosen_equals_rejected 2" in human


def test_the_cli_exits_2_with_one_line_on_a_bad_row_and_shows_pairs(env, capsys, monkeypatch):
    bad = env.write("bad.jsonl", [EXPLICIT, {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}])
    proc = run_cli("data", "prepare", str(bad), "--task", "preference", "--tokenizer", "char", workspace=env.ws.root)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and f"{bad}:2:" in proc.stderr and "Traceback" not in proc.stderr

    good = env.write("good.jsonl", [EXPLICIT, MESSAGES, HH, KTO_GOOD])
    prepared = llmkit(capsys, monkeypatch, env.ws.root, "data", "prepare", str(good), "--task", "preference",
                      "--tokenizer", "char", "--name", "ok", "--splits-val", "0", "--splits-test", "0")
    assert "preference: 3 pairs, 1 unpaired true, 0 unpaired false; skipped: none" in " ".join(prepared.split())
    shown = llmkit(capsys, monkeypatch, env.ws.root, "data", "show", "ok", "--n", "10")
    assert "chosen: Yes, they purr when content." in shown and "rejected: I don't know." in shown
    assert "completion: Hello, nice to meet you." in shown
