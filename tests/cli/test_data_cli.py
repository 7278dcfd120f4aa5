"""`llmkit data prepare | report | show` through the real console entry point: exit codes, --json, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def llmkit(*args: str, workspace: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(workspace)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    ws = tmp_path_factory.mktemp("ws")
    out = llmkit("data", "prepare", str(SHAKESPEARE), "--name", "shakespeare", "--task", "lm", "--tokenizer", "char",
                 "--json", workspace=ws)
    assert out.returncode == 0, out.stderr
    return ws, json.loads(out.stdout)


def test_prepare_prints_the_new_version_as_json(prepared):
    _, result = prepared
    assert result["ref"] == "shakespeare:v1" and result["existed"] is False
    assert result["counts"]["kept"] == sum(s["records"] for s in result["splits"].values()) > 0
    assert Path(result["path"], "manifest.json").exists()


def test_preparing_the_same_input_again_says_it_exists(prepared):
    ws, first = prepared
    again = llmkit("data", "prepare", str(SHAKESPEARE), "--name", "shakespeare", "--task", "lm", "--tokenizer", "char",
                   workspace=ws)
    assert again.returncode == 0
    assert "shakespeare:v1 already exists" in again.stdout
    assert sorted(p.name for p in (ws / "datasets").iterdir()) == [Path(first["path"]).name]


def test_the_human_summary_says_where_the_name_came_from_and_the_tokenizer_as_asked(tmp_path):
    source = tmp_path / "notes.txt"
    source.write_text("\n\n".join(f"note {i}: the quick brown fox jumps over the lazy dog" for i in range(40)))
    out = llmkit("data", "prepare", str(source), "--task", "lm", "--tokenizer", "char", workspace=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    assert "dataset notes:v1" in out.stdout and "named 'notes' after its input; --name NAME chooses" in out.stdout
    assert "tokenizer: char, vocabulary " in out.stdout  # it said "wordlevel vocab 31"
    assert not out.stderr.strip()  # no progress residue off a terminal
    # the whole file as one document: no val split, said now (it came out when training stopped, blaming --context)
    assert "note: val and test are empty (1 record kept): training evaluates on val" in " ".join(out.stdout.split())
    lines = llmkit("data", "prepare", str(source), "--task", "lm", "--tokenizer", "char", "--doc-split", "blank-line",
                   "--name", "lines", workspace=tmp_path / "ws")
    assert lines.returncode == 0 and "empty" not in lines.stdout, lines.stdout
    rows = tmp_path / "rows.csv"  # a bad row is read too: "3 read, 3 kept, ..., 1 bad" did not add up
    rows.write_text("text,label\nhello there,ham\nwin now,spam\ncall me,ham\nbad, row,spam\n")
    skipped = llmkit("data", "prepare", str(rows), "--task", "classify", "--skip-bad", workspace=tmp_path / "ws")
    assert "records: 4 read, 3 kept;" in skipped.stdout and ", 1 bad" in skipped.stdout, skipped.stdout
    assert "needs at least 2" not in skipped.stdout
    one_label = tmp_path / "one.csv"  # registered in silence; `train classify` refused it later
    one_label.write_text("text,label\n" + "".join(f"message number {i},ham\n" for i in range(12)))
    alone = llmkit("data", "prepare", str(one_label), "--task", "classify", workspace=tmp_path / "ws")
    assert alone.returncode == 0 and "note: every train record has the label 'ham': a classifier needs at least 2" in \
        " ".join(alone.stdout.split()), alone.stdout


def test_report_json_has_the_statistics_and_the_plots_exist(prepared):
    ws, first = prepared
    out = llmkit("data", "report", "shakespeare", "--json", workspace=ws)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["records"] == first["counts"]["kept"]
    assert report["tokens"] == sum(s["tokens"] for s in first["splits"].values())
    assert report["duplicates_removed"] == 0 and report["pii"] == {}
    assert report["top_tokens"][0][0] == " "  # the most common character in Shakespeare
    assert [Path(p).name for p in report["plots"]] == ["lengths.png"]
    assert all(Path(p).stat().st_size > 1000 for p in report["plots"])
    human = llmkit("data", "report", "shakespeare", workspace=ws)
    assert human.returncode == 0 and "duplicates removed: 0" in human.stdout and "lengths.png" in human.stdout


def test_show_json_gives_every_record_of_the_split_unless_n_is_given(prepared):
    ws, first = prepared
    everything = json.loads(llmkit("data", "show", "shakespeare", "--split", "val", "--json", workspace=ws).stdout)
    assert len(everything) == first["splits"]["val"]["records"] > 2
    assert all(set(r) == {"text", "source"} for r in everything)
    two = json.loads(llmkit("data", "show", "shakespeare", "--split", "val", "--n", "2", "--json", workspace=ws).stdout)
    assert two == everything[:2]
    human = llmkit("data", "show", "shakespeare", "--n", "1", workspace=ws)
    assert human.returncode == 0 and "input.txt:1" in human.stdout


def test_user_mistakes_exit_2_with_one_line(prepared, tmp_path):
    ws, _ = prepared
    split = llmkit("data", "show", "shakespeare", "--split", "dev", workspace=ws)
    assert split.returncode == 2 and "split 'dev' does not exist; splits: train, val, test" in split.stderr
    missing = llmkit("data", "report", "hamlet", workspace=ws)
    assert missing.returncode == 2 and "no dataset named 'hamlet'" in missing.stderr and "shakespeare" in missing.stderr


def test_bad_input_fails_with_file_and_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    ws = tmp_path / "ws"
    out = llmkit("data", "prepare", str(bad), "--tokenizer", "char", workspace=ws)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    assert f"{bad}:2: invalid JSON (Expecting value" in out.stderr.replace("\n", "")
    assert list((ws / "datasets").iterdir()) == []
    skipped = llmkit("data", "prepare", str(bad), "--tokenizer", "char", "--skip-bad", "--json", workspace=ws)
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["counts"]["bad"] == 1


def test_from_feedback_without_a_workspace_says_so_and_makes_none(tmp_path, cli_here):
    missing = tmp_path / "typo-ws"
    out = cli_here("data", "from-feedback", "--name", "fb", workspace=missing)
    assert out.returncode == 2 and f"no workspace at {missing}" in out.stderr and not missing.exists()


def test_prepare_says_which_label_spellings_became_one_class_and_which_repeats_disagreed(tmp_path):
    rows = ["text,label"] + [f"free prize number {i},{('spam', 'Spam ', 'SPAM')[i % 3]}" for i in range(12)] \
        + [f"see you at {i} tonight,ham" for i in range(12)] + ["free prize number 0,ham"]
    (tmp_path / "msgs.csv").write_text("\n".join(rows) + "\n")
    out = llmkit("data", "prepare", str(tmp_path / "msgs.csv"), "--task", "classify", "--tokenizer", "char",
                 workspace=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    assert "label 'spam' also written 'Spam' (4), 'SPAM' (4)" in out.stdout, out.stdout
    assert "1 repeated text(s) with another label dropped; the first: " in out.stdout and "msgs.csv:26" in out.stdout
