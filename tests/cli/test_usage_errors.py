"""Usage errors through the real console entry point: exit 2, one line "error: ...", no traceback, no box."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import run_cli

USAGE_ERRORS = [
    (["ls", "--bogus"], "no such option: --bogus", "ls --help"),
    (["bogus"], "no such command 'bogus'", "--help lists the commands"),
    (["generate"], "missing argument", "generate --help"),
    (["train", "pretrain", "--max-steps", "abc"], "'--max-steps'", "train pretrain --help"),
    (["doctor", "--bogus"], "no such option: --bogus", "doctor --help"),  # --workspace it takes, as every command
]


@pytest.mark.parametrize(("args", "says", "points_to"), USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], says: str, points_to: str, tmp_path: Path):
    proc = run_cli(*args, workspace=tmp_path / "ws", timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and says in lines[0] and points_to in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "failed:" not in proc.stderr
    assert not any(box in proc.stderr for box in "╭╰│─"), proc.stderr
    assert not (tmp_path / "ws").exists()  # nothing ran


def test_a_group_without_a_command_shows_its_help_and_exits_2(tmp_path: Path):
    proc = run_cli("data", workspace=tmp_path / "ws", timeout=120)
    assert proc.returncode == 2
    assert "prepare" in proc.stdout + proc.stderr and "failed:" not in proc.stderr


def test_what_the_user_typed_is_printed_as_typed_never_as_markup(tmp_path: Path):
    # rich read '[/x]' in an error message as a closing tag: a MarkupError traceback; '[data]' vanished from paths
    run_cli("init", workspace=tmp_path / "ws", timeout=120, check=True)  # show reads a workspace; it never makes one
    proc = run_cli("show", "notes[/draft][data]", workspace=tmp_path / "ws", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "notes[/draft][data]" in lines[0], proc.stderr


def test_table_cells_holding_user_text_are_not_markup():
    from rich.console import Console

    from llmkit.cli.tune import trials_table

    console = Console(record=True, width=200)
    console.print(trials_table("s", "f1", [{"trial": 0, "optimizer": "[/b] adam [red]w", "f1": 0.5}]))
    assert "[/b] adam [red]w" in console.export_text()


def test_help_shows_the_brackets_a_description_holds():
    from typer.testing import CliRunner

    from llmkit.cli import app

    out = CliRunner().invoke(app, ["train", "sft", "--help"], env={"COLUMNS": "240"}).output
    assert "e.g. [q_proj, v_proj]; all-linear" in out  # rich read '[q_proj, v_proj]' as a tag: "e.g. ; all-linear"


def test_a_full_disk_is_one_line_naming_where_and_what_is_free(tmp_path):
    """Disk full while writing a dataset or a model said `OSError: [Errno 28] No space left on device` (or
    safetensors' own words for it) with no path and no way forward."""
    import errno

    from llmkit.cli import _machine_failure

    target = tmp_path / "ws" / "models" / "m-1234" / "model.safetensors"  # not made: the write failed
    said = _machine_failure(OSError(errno.ENOSPC, "No space left on device", str(target)))
    assert said.startswith(f"the disk is full writing under {tmp_path} (") and " MiB free): free space" in said
    library = _machine_failure(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert library is not None and "the disk is full writing under" in library
    numpy = _machine_failure(OSError("85087 requested and 59443 written"))  # ndarray.tofile on a full disk
    assert numpy is not None and numpy.startswith("the disk is full writing under ")
    assert _machine_failure(OSError(errno.EACCES, "Permission denied")) is None
    assert _machine_failure(ValueError("something else")) is None
