"""Hostile config files: YAML built to hang or crash the reader (aliases of aliases, nesting thousands deep, an alias
inside itself) or to run code (a python tag) is one line naming the file, exit 2, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmkit.config.files import read_config_file
from llmkit.errors import UserError

# Nine anchors, each nine aliases of the one before: 9**9 strings once expanded.
LAUGHS = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9) if b else ', '.join(['lol'] * 9)}]\n"
                 for a, b in zip("abcdefghi", [None, *"abcdefgh"], strict=True))


@pytest.mark.parametrize(("text", "says"), [
    ("pretrain:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", "nests thousands of levels deep"),
    ("pretrain:\n  lr: &a [*a]\n", "alias sits inside itself"),
], ids=["nested-5000-deep", "alias-inside-itself"])
def test_yaml_built_to_hang_or_crash_the_reader_is_one_line(tmp_path: Path, text: str, says: str):
    file = tmp_path / "hostile.yaml"
    file.write_text(text)
    with pytest.raises(UserError) as err:
        read_config_file(file)
    assert says in str(err.value) and str(file) in str(err.value) and "\n" not in str(err.value)


def test_a_billion_laughs_is_refused_in_one_line_not_walked(tmp_path: Path):
    file = tmp_path / "laughs.yaml"
    file.write_text(LAUGHS + "pretrain:\n  max_steps: 5\n")
    # in a process of its own, bounded: walked, these aliases held the reader for hours
    proc = run_cli("data", "prepare", str(file), "--name", "x", "--config", str(file), workspace=tmp_path / "ws",
                   timeout=60)
    said = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "through its aliases" in said, said
    assert "\n" not in said and "Traceback" not in said, said


def test_aliases_of_a_real_config_still_read(tmp_path: Path):
    file = tmp_path / "ok.yaml"
    file.write_text("pretrain:\n  max_steps: &n 40\n  eval_every: *n\n")
    assert read_config_file(file)["pretrain"] == {"max_steps": 40, "eval_every": 40}


def test_a_python_tag_runs_nothing_and_is_one_line_on_the_cli(tmp_path: Path):
    ran = tmp_path / "ran"
    file = tmp_path / "tagged.yaml"
    file.write_text(f'pretrain: !!python/object/apply:os.system ["touch {ran}"]\n')
    proc = run_cli("data", "prepare", str(file), "--name", "x", "--config", str(file), workspace=tmp_path / "ws",
                   timeout=120)
    said = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "invalid YAML" in said and "\n" not in said and "Traceback" not in said, said
    assert not ran.exists()
