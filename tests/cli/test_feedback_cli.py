"""`llmkit forget` and `llmkit ls feedback`: stored prompts, answers and corrections, listed and removed by age,
model or response (a deletion request or a retention rule was hand-written SQL)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

from llmkit.registry import Registry
from llmkit.workspace import Workspace


def test_forget_removes_what_every_filter_given_matches_and_asks_first(tmp_path: Path, cli_here):
    root = tmp_path / "ws"
    Workspace.open(root)
    registry = Registry.for_workspace(root)
    for model, rid in (("prod", "r1"), ("prod", "r2"), ("staging", "r3")):
        registry.add_feedback(model, response_id=rid, prompt=f"a question from {rid}", response="an answer",
                              extra={"kind": "request"})
    registry.add_feedback("prod", response_id="r2", rating=-1, correction="a better answer")

    listed = json.loads(cli_here("ls", "feedback", "--json", workspace=root, check=True).stdout)
    assert sorted((r["model"], r["response_id"]) for r in listed) == [("prod", "r1"), ("prod", "r2"), ("prod", "r2"),
                                                                      ("staging", "r3")]
    unasked = run_cli("forget", "--response-id", "r2", workspace=root)  # nobody on stdin to say yes
    assert unasked.returncode == 2 and "pass --yes" in unasked.stderr and len(registry.list_feedback()) == 4

    one_person = json.loads(cli_here("forget", "--response-id", "r2", "--yes", "--json", workspace=root, check=True).stdout)
    assert one_person == {"removed": 2}  # the logged request and its correction
    both = json.loads(cli_here("forget", "--model", "prod", "--before", "2000-01-01", "--yes", "--json", workspace=root,
                              check=True).stdout)
    assert both == {"removed": 0}  # filters combine: prod rows older than 2000, none
    cli_here("forget", "--model", "staging", "--yes", workspace=root, check=True)
    assert [r["response_id"] for r in registry.list_feedback()] == ["r1"]
    retention = cli_here("forget", "--before", "2999-01-01", "--yes", workspace=root, check=True)
    assert "removed 1 feedback and request-log rows" in retention.stdout and registry.list_feedback() == []

    for args, says in ((["forget", "--yes"], "say what to forget: --before DATE, --model NAME or --response-id ID"),
                       (["forget", "--before", "last week", "--yes"], "--before = 'last week': not an ISO date or time"),
                       (["forget", "--response-id", "", "--yes"], "--response-id is empty: give the id of a response"),
                       (["forget", "--model", " ", "--yes"], "--model is empty: give the served model name")):
        proc = cli_here(*args, workspace=root)
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
