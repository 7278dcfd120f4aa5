"""Text arguments are checked at the CLI's edge (cli.common.valid_text): a lone surrogate, from a shell's
$'\\ud800' or an escaped one in a JSON file, is one line and exit 2, never a tokenizer's TypeError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

# What bash passes for $'\ud800' (its UTF-8-like bytes ED A0 80), as Python's argv decoding keeps them.
SHELL_SURROGATE = b"\xed\xa0\x80".decode("utf-8", errors="surrogateescape")


def _refused(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"{where} contains an unpaired surrogate" in lines[0] and "Traceback" not in proc.stderr


def test_generate_prompt_flag_and_stdin(lm_workspace: Path, tiny_model):
    _refused(run_cli("generate", "tiny-lm", "--prompt", "ROMEO" + SHELL_SURROGATE, workspace=lm_workspace), "--prompt")
    piped = subprocess.run([sys.executable, "-m", "llmkit", "generate", "tiny-lm"], input=b"KING\xed\xa0\x80",
                           capture_output=True, timeout=300, env={**os.environ, "LLMKIT_HOME": str(lm_workspace)})
    _refused(subprocess.CompletedProcess(piped.args, piped.returncode, piped.stdout.decode(), piped.stderr.decode()),
             "the prompt on stdin")


def test_chat_system_message(lm_workspace: Path, tiny_model):
    _refused(run_cli("chat", "tiny-lm", "--system", SHELL_SURROGATE, workspace=lm_workspace), "--system")


def test_predict_text_from_a_jsonl_file(lm_workspace: Path, sms_classifier, tmp_path: Path):
    texts = tmp_path / "texts.jsonl"
    # json.dumps escapes the lone surrogate as \ud800, which json.loads turns back into one.
    texts.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "bad \ud800"}) + "\n")
    _refused(run_cli("predict", "sms-clf", "--file", str(texts), workspace=lm_workspace), f"{texts}: text 2")


def test_explain_text_argument(lm_workspace: Path, sms_classifier):
    _refused(run_cli("explain", "sms-clf", "win" + SHELL_SURROGATE, workspace=lm_workspace), "TEXT")
