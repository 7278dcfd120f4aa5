"""The workspace and config options every command shares: `doctor --workspace`, a registry file that is not a
database, `--config` naming a folder, and a misspelt `pretrain.model` field, each said in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path


def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "failed:" not in proc.stderr and "sqlalche.me" not in proc.stderr
    return lines[0]


def test_doctor_takes_workspace(tmp_path: Path, cli_here):
    # the README says every command takes --workspace DIR: doctor said "no such option: --workspace"
    chosen = tmp_path / "ws2"
    cli_here("init", "--workspace", str(chosen), workspace=tmp_path / "other", check=True)
    proc = cli_here("doctor", "--workspace", str(chosen), "--json", workspace=tmp_path / "other", check=True)
    report = json.loads(proc.stdout)
    assert report["workspace"] == str(chosen) and str(chosen / "registry.db") in report["registry"]
    assert report["registry_state"].startswith("schema v")
    assert not (tmp_path / "other").exists()  # $LLMKIT_HOME was not looked at, nor made


def test_a_registry_that_is_not_a_database_is_one_line(tmp_path: Path, cli_here):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "registry.db").write_text("garbage\n")
    line = _one_line(cli_here("ls", "--workspace", str(ws), workspace=tmp_path / "other"))
    assert f"the registry {ws / 'registry.db'} is not a SQLite database llmkit can read" in line, line
    assert "move it aside" in line and "backup" in line and "--workspace" in line, line
    assert (ws / "registry.db").read_text() == "garbage\n"  # left as it was, for the user to look at


def test_config_naming_a_folder_says_so(tmp_path: Path, cli_here):
    line = _one_line(cli_here("train", "pretrain", "--config", str(tmp_path), "--data", "x", workspace=tmp_path / "ws"))
    assert f"--config {tmp_path} is a folder; give a YAML file" in line, line


def test_a_misspelt_model_field_names_the_file_and_the_field(tmp_path: Path, cli_here):
    config = tmp_path / "pretrain.yaml"
    config.write_text("pretrain:\n  model:\n    num_hidden_layrs: 2\n")
    # said before the dataset is looked for (it was said after, without the file or a suggestion)
    line = _one_line(cli_here("train", "pretrain", "--config", str(config), "--data", "nosuch", workspace=tmp_path / "ws"))
    assert line == (f"error: {config}:3: unknown key 'pretrain.model.num_hidden_layrs' (did you mean 'num_hidden_layers'?);"
                    " it takes LlamaConfig fields such as hidden_size, num_hidden_layers, num_attention_heads, "
                    "num_key_value_heads, intermediate_size"), line


def test_the_known_model_fields_cover_the_installed_llama_config():
    from transformers import LlamaConfig

    from llmkit.config.llama_fields import LLAMA_FIELDS

    # the list is kept without importing transformers: a field a newer transformers adds must be added to it
    assert set(LlamaConfig().to_dict()) <= set(LLAMA_FIELDS)
