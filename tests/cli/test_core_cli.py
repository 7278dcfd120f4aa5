"""The workspace commands through the real console entry point: --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import run_cli

from llmkit.registry import Registry


def llmkit(*args: str, cwd: Path | None = None, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=120)


def test_help_lists_the_command_groups():
    out = llmkit("--help")
    assert out.returncode == 0
    for command in ("data", "train", "generate", "chat", "demo", "init", "ls", "show", "rm", "doctor", "config"):
        assert command in out.stdout


def _commands() -> list[tuple[list[str], object]]:
    """Every command and command group of the typer app, as (path, click command): a new one is covered."""
    import typer

    from llmkit.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_command_has_help_with_an_example(capsys, monkeypatch):
    commands = _commands()
    assert len(commands) > 30 and ["audit", "privacy"] in [path for path, _ in commands]
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside an example line
    root = commands[0][1]
    for path, _ in commands:
        # In-process, on the click command the console script runs: 35 help pages in well under a second.
        assert root.main([*path, "--help"], prog_name="llmkit", standalone_mode=False) == 0, path
        page = capsys.readouterr().out
        # The example is of this command (or, for a group, of one of its sub-commands).
        assert f"Example: llmkit {' '.join(path)}".rstrip() in page, (path, page[-300:])


def test_every_help_example_uses_only_options_its_command_has():
    import re
    import shlex

    root = _commands()[0][1]
    checked = 0
    for path, command in _commands():
        # Each 'llmkit ...' in the epilog, up to a comma-space or parenthesis (prose follows those).
        for example in re.findall(r"llmkit ((?:[^\n(,]|,(?! ))+)", command.epilog or ""):
            words, target = shlex.split(example), root
            while words and words[0] in getattr(target, "commands", {}):
                target = target.commands[words.pop(0)]
            assert not hasattr(target, "commands"), (path, example)  # it names a command, not just a group
            options = {o for p in target.params for o in (*p.opts, *p.secondary_opts)}
            flags = [w.split("=")[0] for w in words if w.startswith("--")]
            assert set(flags) <= options, (path, example, set(flags) - options)
            checked += 1
    assert checked >= len(_commands())


def test_version_and_doctor_answer_in_json():
    from llmkit.registry import SCHEMA_VERSION

    version = json.loads(llmkit("version", "--json").stdout)
    assert version["llmkit"] and version["registry_schema"] == SCHEMA_VERSION
    doctor = json.loads(llmkit("doctor", "--json").stdout)
    assert doctor["device"] in ("cpu", "cuda", "mps")
    assert doctor["threads"] >= 1
    assert {"workspace", "registry", "registry_state"} <= set(doctor)  # what ops look at first
    from llmkit.data.figures import cjk_font

    assert doctor["cjk_plot_font"] == cjk_font()  # the font Chinese labels in plots are drawn in, or None
    human = llmkit("doctor", env={"COLUMNS": "300"}).stdout  # one run for both checks below: doctor imports every backend
    if doctor["cjk_plot_font"] is None:
        assert "Chinese labels in plots show as boxes" in human
    assert set(doctor["backends"]) >= {"peft", "llama_cpp", "onnxruntime", "captum", "playwright"}
    # each extra of the installed llmkit with what of it is missing (the test environment installs .[all])
    assert {"serve", "finetune", "explain", "edge", "eval", "postgres"} <= set(doctor["extras"])
    assert not any(doctor["extras"].values()), doctor["extras"]
    assert "llmkit[serve]" in human


def test_doctor_says_a_workspace_that_is_a_file_is_one(tmp_path: Path, cli_here):
    """It said "none yet (llmkit init, or the first command that registers something, makes it)"; init refuses a file."""
    (tmp_path / "afile").write_text("x")
    doctor = json.loads(cli_here("doctor", "--json", "--workspace", str(tmp_path / "afile"), workspace=tmp_path,
                                 check=True).stdout)
    assert doctor["workspace"].endswith("afile (a file, not a folder: pass --workspace with a folder)")
    assert doctor["registry_state"] == "none: the workspace is a file"


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
    ("pretrain:\n  lr: fast\n", "pretrain.lr"),
    ("pretrain:\n  lr: [1\n", "invalid YAML"),
    ("pretrian:\n  lr: 1\n", "did you mean 'pretrain'"),
    ("- 1\n- 2\n", "mapping"),
])
def test_bad_config_files_are_one_line_errors(tmp_path: Path, body: str, expected: str, cli_here):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    out = cli_here("init", "--workspace", str(tmp_path / "ws"), "--config", str(bad), workspace=tmp_path / "home")
    assert out.returncode == 2 and expected in out.stderr


def test_flags_override_the_config_file(lm_workspace: Path, tiny_model, tmp_path: Path):
    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm, resolve_model

    cfg = tmp_path / "gen.yaml"
    cfg.write_text("generate:\n  temperature: 3.0\n  seed: 11\n  max_new_tokens: 40\n")
    out = run_cli("generate", "tiny-lm", "--prompt", "ROMEO:", "--config", str(cfg), "--max-new-tokens", "12", "--json",
                  workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["completion_tokens"] == 12  # the flag, not the file's 40
    # The file's temperature and seed were used: the same draw as the Python API with them, and not the default's.
    lm, tok = load_causal_lm(resolve_model("tiny-lm", Registry.for_workspace(lm_workspace)))
    assert result["text"] == generate(lm, tok, "ROMEO:", max_new_tokens=12, temperature=3.0, seed=11).text
    assert result["text"] != generate(lm, tok, "ROMEO:", max_new_tokens=12, seed=11).text


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

    # a workspace with models and no study: "nothing registered yet" said the opposite of what is there
    assert llmkit("ls", "studies", "--workspace", str(ws)).stdout.strip() == "no studies here yet"
    reg = Registry.for_workspace(ws)
    (ws / "runs" / "study").mkdir()
    study = reg.add("run", "tune-classify-toy", kind="study", path=ws / "runs" / "study")
    reg.close()
    listed = json.loads(llmkit("ls", "--workspace", str(ws), "--json").stdout)
    assert {r["name"] for r in listed} == {"toy", "toy-model", "tune-classify-toy"}
    assert [r["id"] for r in json.loads(llmkit("ls", "studies", "--workspace", str(ws), "--json").stdout)] == [study.id]
    assert [r["name"] for r in json.loads(llmkit("ls", "models", "--workspace", str(ws), "--json").stdout)] == ["toy-model"]
    shown = json.loads(llmkit("show", "toy-model", "--workspace", str(ws), "--json").stdout)
    assert shown["id"] == model.id and shown["parents"][0]["id"] == ds.id
    assert llmkit("ls", "things", "--workspace", str(ws)).returncode == 2
    narrow = llmkit("ls", "--workspace", str(ws), env={"COLUMNS": "80"}).stdout
    assert model.id in narrow and ds.id in narrow  # an 80-column terminal cut ids (which commands take) to '35650a…'

    used = llmkit("rm", "toy", "--yes", "--workspace", str(ws))  # toy-model was trained on it
    assert used.returncode == 2 and "dataset toy:v1 is what 1 record(s) were made from: model toy-model:v1 (trained_on)" \
        in used.stderr and "--force" in used.stderr and folder.exists()
    refused = llmkit("rm", "toy-model", "--workspace", str(ws), stdin="n\n")
    assert refused.returncode != 0 and model_dir.exists()
    unanswered = llmkit("rm", "toy-model", "--workspace", str(ws), stdin="")  # a script: it printed "aborted", exit 1
    assert unanswered.returncode == 2 and "got no answer on stdin: pass --yes" in unanswered.stderr and model_dir.exists()
    removed = json.loads(llmkit("rm", "toy-model", "--yes", "--workspace", str(ws), "--json").stdout)
    assert removed["files_removed"] and not model_dir.exists()
    missing = llmkit("show", "toy-model", "--workspace", str(ws))
    assert missing.returncode == 2 and "toy-model" in missing.stderr
    assert llmkit("rm", "toy", "--yes", "--workspace", str(ws)).returncode == 0  # nothing made from it now


def test_config_show_prints_commented_defaults_for_each_stage():
    import yaml

    for stage in ("workspace", "data", "pretrain", "bench-model", "generate", "demo"):
        out = llmkit("config", "show", stage)
        assert out.returncode == 0
        assert stage in yaml.safe_load(out.stdout)
        assert out.stdout.count("#") >= len(yaml.safe_load(out.stdout)[stage])
    assert llmkit("config", "show", "trian").returncode == 2
    # A section's old name shows it under its new one (named after the command).
    assert list(yaml.safe_load(llmkit("config", "show", "train").stdout)) == ["pretrain"]


def test_reading_commands_never_make_a_workspace_at_a_mistyped_path(tmp_path: Path) -> None:
    """ls, show and rm at a folder that does not exist say so and leave nothing behind (they made an empty
    workspace there, and ls said "nothing registered yet", which sent the user to the demo)."""
    missing = tmp_path / "wrokspace"
    listed = llmkit("ls", "--workspace", str(missing))
    assert listed.returncode == 0 and f"no workspace at {missing}" in listed.stdout, listed
    assert json.loads(llmkit("ls", "models", "--workspace", str(missing), "--json").stdout) == []
    for command in (["show", "toy"], ["rm", "toy", "--yes"], ["data", "report", "toy"], ["data", "show", "toy"]):
        out = llmkit(*command, "--workspace", str(missing))
        assert out.returncode == 2 and out.stderr.strip() == \
            f"error: no workspace at {missing}: check --workspace (or $LLMKIT_HOME), or make one with llmkit init", out
    assert not missing.exists()
    # a folder that exists but holds no workspace (someone's documents) was made one: datasets/, runs/, ... and a
    # registry.db appeared in it
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "notes.txt").write_text("mine\n")
    assert f"no workspace at {documents}" in llmkit("ls", "--workspace", str(documents)).stdout
    for command in (["show", "toy"], ["gc"]):
        out = llmkit(*command, "--workspace", str(documents))
        assert out.returncode == 2 and f"error: no workspace at {documents}" in out.stderr, out
    assert sorted(p.name for p in documents.iterdir()) == ["notes.txt"]


def test_show_of_a_run_that_failed_after_a_checkpoint_says_how_to_continue(lm_workspace: Path, cli_here):
    # a full disk or a registry gone mid-run fails it; its checkpoint continues it, and show said nothing of that
    from tests.conftest import tiny_config

    from llmkit.train import pretrain
    from llmkit.train.loop import watching
    from llmkit.workspace import Workspace

    def disk_fills(_run: str, step: int, _evaluation) -> None:
        if step == 15:  # after the checkpoint of step 10
            raise OSError(28, "No space left on device")

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    with watching(disk_fills), pytest.raises(OSError):
        pretrain(tiny_config(name="disk-filled"), ws, registry)
    run = next(r for r in registry.list("run") if r.name.startswith("disk-filled"))
    registry.close()
    shown = " ".join(cli_here("show", run.id, workspace=lm_workspace, check=True).stdout.split())
    assert "state: failed" in shown and f"continue with: llmkit train pretrain --resume {run.id}" in shown, shown
