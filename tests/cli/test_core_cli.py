"""The workspace commands through the real console entry point: --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.registry import Registry


def llmkit(*args: str, cwd: Path | None = None, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=120)


def test_help_lists_the_command_groups():
    out = llmkit("--help")
    assert out.returncode == 0
    for command in ("data", "train", "generate", "chat", "demo", "init", "ls", "show", "rm", "doctor", "config"):
        assert command in out.stdout


def test_every_command_has_help_with_an_example():
    for command in (["init"], ["ls"], ["show"], ["rm"], ["doctor"], ["version"], ["config", "show"],
                    ["data", "prepare"], ["data", "report"], ["data", "show"], ["train", "pretrain"],
                    ["generate"], ["chat"], ["demo"]):
        out = llmkit(*command, "--help")
        assert out.returncode == 0, command
        assert "Example: llmkit" in out.stdout, command


def test_version_and_doctor_answer_in_json():
    assert json.loads(llmkit("version", "--json").stdout)["llmkit"]
    doctor = json.loads(llmkit("doctor", "--json").stdout)
    assert doctor["device"] in ("cpu", "cuda", "mps")
    assert doctor["threads"] >= 1
    assert set(doctor["backends"]) >= {"peft", "llama_cpp", "onnxruntime", "captum", "playwright"}


def test_init_creates_the_workspace_from_flag_env_or_default(tmp_path: Path):
    flagged = json.loads(llmkit("init", "--workspace", str(tmp_path / "a"), "--json").stdout)
    assert flagged["workspace"] == str(tmp_path / "a") and (tmp_path / "a" / "registry.db").exists()
    from_env = json.loads(llmkit("init", "--json", env={"LLMKIT_HOME": str(tmp_path / "b")}).stdout)
    assert from_env["workspace"] == str(tmp_path / "b")
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_HOME"}
    default = subprocess.run([sys.executable, "-m", "llmkit", "init", "--json"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=120)
    assert json.loads(default.stdout)["workspace"] == str(tmp_path / "llmkit-workspace")


def test_init_with_an_unknown_config_key_names_it_and_exits_2(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  tokenizr: char\n")
    out = llmkit("init", "--workspace", str(tmp_path / "ws"), "--config", str(bad))
    assert out.returncode == 2
    assert "data.tokenizr" in out.stderr and "did you mean 'tokenizer'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("body, expected", [
    ("train:\n  lr: fast\n", "train.lr"),
    ("train:\n  lr: [1\n", "invalid YAML"),
    ("trian:\n  lr: 1\n", "did you mean 'train'"),
    ("- 1\n- 2\n", "mapping"),
])
def test_bad_config_files_are_one_line_errors(tmp_path: Path, body: str, expected: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    out = llmkit("init", "--workspace", str(tmp_path / "ws"), "--config", str(bad))
    assert out.returncode == 2 and expected in out.stderr


def test_flags_override_the_config_file(tmp_path: Path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("generate:\n  temperature: 0.5\n  max_new_tokens: 7\n")
    from llmkit.config import load_section

    assert load_section("generate", cfg, {"max_new_tokens": 3}).model_dump() | {} == {
        **load_section("generate", None, {}).model_dump(), "temperature": 0.5, "max_new_tokens": 3}


def test_ls_show_rm_round_trip(tmp_path: Path):
    ws = tmp_path / "ws"
    llmkit("init", "--workspace", str(ws))
    reg = Registry.for_workspace(ws)
    folder = ws / "datasets" / "toy"
    folder.mkdir()
    ds = reg.add("dataset", "toy", kind="lm", path=folder)
    model_dir = ws / "models" / "toy-model"
    model_dir.mkdir()
    model = reg.add("model", "toy-model", kind="causal-lm", path=model_dir, parents=[(ds.id, "trained_on")])
    reg.close()

    listed = json.loads(llmkit("ls", "--workspace", str(ws), "--json").stdout)
    assert {r["name"] for r in listed} == {"toy", "toy-model"}
    assert [r["name"] for r in json.loads(llmkit("ls", "models", "--workspace", str(ws), "--json").stdout)] == ["toy-model"]
    shown = json.loads(llmkit("show", "toy-model", "--workspace", str(ws), "--json").stdout)
    assert shown["id"] == model.id and shown["parents"][0]["id"] == ds.id
    assert llmkit("ls", "things", "--workspace", str(ws)).returncode == 2

    refused = llmkit("rm", "toy-model", "--workspace", str(ws), stdin="n\n")
    assert refused.returncode != 0 and model_dir.exists()
    removed = json.loads(llmkit("rm", "toy-model", "--yes", "--workspace", str(ws), "--json").stdout)
    assert removed["files_removed"] and not model_dir.exists()
    missing = llmkit("show", "toy-model", "--workspace", str(ws))
    assert missing.returncode == 2 and "toy-model" in missing.stderr


def test_config_show_prints_commented_defaults_for_each_stage():
    import yaml

    for stage in ("workspace", "data", "train", "generate", "demo"):
        out = llmkit("config", "show", stage)
        assert out.returncode == 0
        assert stage in yaml.safe_load(out.stdout)
        assert out.stdout.count("#") >= len(yaml.safe_load(out.stdout)[stage])
    assert llmkit("config", "show", "trian").returncode == 2
