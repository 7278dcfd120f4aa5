"""`llmkit promote`, `show ALIAS`, `ls aliases` and a command that takes MODEL given an alias, as real CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli, tiny_config

from llmkit.config import CompareConfig
from llmkit.eval.gate import gate
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def other(lm_workspace: Path, tiny_model):
    """A second registered model for the alias to move to."""
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    return pretrain(tiny_config(name="promote-other", max_steps=8), ws, Registry.for_workspace(ws.root))


def _cli_greedy(model: str, root: Path) -> str:
    out = run_cli("generate", model, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0", "--json",
                  workspace=root, check=True)
    return json.loads(out.stdout)["text"]


def _greedy(name: str, root: Path) -> str:
    """The registered model's greedy text, computed here (the CLI's must be the same)."""
    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm, resolve_model

    lm, tok = load_causal_lm(resolve_model(name, Registry.for_workspace(root)))
    return generate(lm, tok, "ROMEO:", max_new_tokens=12, temperature=0).text


def test_promote_moves_the_alias_records_the_history_and_generate_follows_it(lm_workspace: Path, tiny_model, other, cli_here):
    root = lm_workspace
    first = cli_here("promote", "tiny-lm", "--alias", "cli-prod", "--note", "first", "--json", workspace=root, check=True)
    assert json.loads(first.stdout)["model_ref"] == tiny_model.ref
    assert _cli_greedy("cli-prod", root) == _greedy("tiny-lm", root)
    moved = cli_here("promote", "promote-other", "--alias", "cli-prod", workspace=root, check=True)
    assert f"cli-prod -> {other.ref} (was {tiny_model.ref})" in moved.stdout
    assert _cli_greedy("cli-prod", root) == _greedy("promote-other", root) != _greedy("tiny-lm", root)

    shown = json.loads(cli_here("show", "cli-prod", "--json", workspace=root, check=True).stdout)
    assert (shown["alias"], shown["model_id"]) == ("cli-prod", other.id)
    assert [(m["previous_ref"], m["model_ref"], m["note"]) for m in shown["history"]] == [
        (None, tiny_model.ref, "first"), (tiny_model.ref, other.ref, "")]
    assert all(m["moved_by"] and m["moved"].endswith("+00:00") for m in shown["history"])
    listed = json.loads(cli_here("ls", "aliases", "--json", workspace=root, check=True).stdout)
    assert {m["alias"]: m["model_ref"] for m in listed}["cli-prod"] == other.ref


def test_promote_require_pass_reads_the_last_gate(lm_workspace: Path, tiny_model, other, cli_here):
    root = lm_workspace
    refused = cli_here("promote", "promote-other", "--alias", "cli-gated", "--require-pass", workspace=root)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: --require-pass: {other.ref} has not been through the gate; run llmkit compare BASE promote-other "
        "--data NAME first"]
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    cfg = CompareConfig(data="tiny", max_items=8, general=False)
    assert gate("tiny-lm", "promote-other", cfg, ws, registry)["verdict"] == "fail"  # 8 steps lose to 60
    failed = cli_here("promote", "promote-other", "--alias", "cli-gated", "--require-pass", workspace=root)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert f"{other.ref}'s last gate against {tiny_model.ref} on tiny:v1 failed (perplexity" in failed.stderr
    assert gate("promote-other", "tiny-lm", cfg, ws, registry)["verdict"] == "pass"
    cli_here("promote", "tiny-lm", "--alias", "cli-gated", "--require-pass", workspace=root, check=True)
    assert cli_here("show", "cli-gated", "--json", workspace=root, check=True).stdout.count('"model_ref"') == 2


@pytest.mark.parametrize(("args", "message"), [
    (("promote", "nope", "--alias", "cli-x"), "error: no model 'nope' in the registry; an alias points at a registered model"),
    (("promote", "promote-other", "--alias", "tiny-lm"),
     "error: alias 'tiny-lm' would shadow the model tiny-lm:v1; an alias needs a name no model has"),
    (("promote", "promote-other", "--alias", "bad/name"), "error: alias name 'bad/name': use ASCII letters"),
    (("generate", "no-such-alias", "--prompt", "x"), "error: no model 'no-such-alias'"),
])
def test_bad_promote_input_is_one_line_and_exit_2(lm_workspace: Path, other, args, message):
    proc = run_cli(*args, workspace=lm_workspace)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(message)


def test_serve_alias_answers_as_the_alias_with_the_model_it_points_at(lm_workspace: Path, tiny_model, other):
    import os
    import re
    import subprocess
    import sys

    import requests

    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm, resolve_model

    run_cli("promote", "tiny-lm", "--alias", "serve-prod", workspace=lm_workspace, check=True)
    run_cli("promote", "promote-other", "--alias", "serve-prod", workspace=lm_workspace, check=True)
    lm, tok = load_causal_lm(resolve_model("promote-other", Registry.for_workspace(lm_workspace)))
    expected = generate(lm, tok, "ROMEO:", max_new_tokens=8, temperature=0).text
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "serve-prod", "--port", "0", "--no-ui"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, said = None, []
        while url is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            said.append(line)
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert requests.get(url + "/health", timeout=10).json()["models"] == ["serve-prod"]
        body = {"model": "serve-prod", "prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
        out = requests.post(url + "/v1/completions", json=body, timeout=60).json()
        assert out["model"] == "serve-prod" and out["choices"][0]["text"] == expected
        # which model the alias was when the server started: ops compare it with the registry's
        card = requests.get(url + "/v1/models/serve-prod", timeout=10).json()
        target = Registry.for_workspace(lm_workspace).get("promote-other", "model")
        assert (card["model_ref"], card["model_id"]) == (target.ref, target.id)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert f"loaded serve-prod -> {target.ref} (causal" in "".join(said)


def test_rm_keeps_an_alias_from_pointing_at_nothing_and_removes_an_alias(lm_workspace: Path, cli_here):
    """`rm MODEL` with an alias on it is refused (one rm took `serve prod` down at its next start) unless --force,
    which removes both; `rm ALIAS` removes an alias, kept in its history; an alias left on a removed model (before
    this) is flagged in `ls aliases`."""
    from llmkit.train import pretrain

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    for name in ("rm-a", "rm-b", "rm-c"):
        pretrain(tiny_config(name=name, max_steps=2, eval_every=2, checkpoint_every=2), ws, registry)
    cli_here("promote", "rm-a", "--alias", "rm-stage", workspace=lm_workspace, check=True)
    refused = cli_here("rm", "rm-a", "--yes", workspace=lm_workspace)
    assert refused.returncode == 2 and "model rm-a:v1 is what alias rm-stage points at" in refused.stderr
    assert registry.find("rm-a", "model") is not None

    removed = cli_here("rm", "rm-stage", "--yes", workspace=lm_workspace)
    assert removed.returncode == 0 and "removed alias rm-stage (it pointed at rm-a:v1" in removed.stdout
    shown = json.loads(cli_here("show", "rm-stage", "--json", workspace=lm_workspace, check=True).stdout)
    assert [m["model_ref"] for m in shown["history"]] == ["rm-a:v1", ""]
    listed = json.loads(cli_here("ls", "aliases", "--json", workspace=lm_workspace, check=True).stdout)
    assert "rm-stage" not in [m["alias"] for m in listed]
    gone = cli_here("generate", "rm-stage", "--prompt", "A", workspace=lm_workspace)
    assert gone.returncode == 2 and "no model 'rm-stage'" in gone.stderr
    again = cli_here("rm", "rm-stage", "--yes", workspace=lm_workspace)
    assert again.returncode == 2 and "alias 'rm-stage' was removed already (it pointed at rm-a:v1)" in again.stderr
    cli_here("promote", "rm-a", "--alias", "rm-stage", workspace=lm_workspace, check=True)  # back, from nothing

    forced = cli_here("rm", "rm-a", "--yes", "--force", workspace=lm_workspace)
    assert forced.returncode == 0 and "removed alias rm-stage" in forced.stdout
    assert "rm-stage" not in [m["alias"] for m in json.loads(cli_here("ls", "aliases", "--json", workspace=lm_workspace,
                                                                      check=True).stdout)]
    cli_here("promote", "rm-b", "--alias", "rm-dangling", workspace=lm_workspace, check=True)
    registry.remove(registry.get("rm-b", "model").id)  # as rm did before it looked at aliases
    listed = {m["alias"]: m for m in json.loads(cli_here("ls", "aliases", "--json", workspace=lm_workspace, check=True).stdout)}
    assert listed["rm-dangling"]["model_removed"] is True
    said = cli_here("ls", "aliases", workspace=lm_workspace).stdout
    assert "(removed)" in said and "rm-dangling point(s) at a removed model" in " ".join(said.split())


def test_promote_answers_without_importing_torch(lm_workspace: Path, other):
    """Moving an alias reads the registry only: it imported torch through eval's gate module to read the last gate
    (2.4 s for a command that answers in under one). torch made unimportable, promote still moves the alias."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from llmkit.cli import main\n"
            f"sys.argv = ['llmkit', 'promote', 'promote-other', '--alias', 'no-torch', '--workspace', {str(lm_workspace)!r}]\n"
            "main()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "no-torch -> promote-other" in run.stdout
