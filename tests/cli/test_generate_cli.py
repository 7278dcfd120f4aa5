"""`llmkit generate` and `llmkit chat` on a real tiny model, through the console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def llmkit(workspace: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, "LLMKIT_HOME": str(workspace)}, timeout=180)


def test_generate_by_registry_name_is_seeded_and_reports_json(lm_workspace: Path, tiny_model):
    args = ["generate", "tiny-lm", "--prompt", "ROMEO:", "--max-new-tokens", "24", "--seed", "3", "--json"]
    first, second = llmkit(lm_workspace, *args), llmkit(lm_workspace, *args)
    assert first.returncode == 0, first.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["text"] == b["text"] and a["completion_tokens"] > 0
    assert (a["completion_tokens"], a["finish_reason"]) == (24, "length") or a["finish_reason"] == "stop"
    # the rate after the first token, apart from the first token's wait (which held the decoder's set-up)
    assert 0 < a["first_token_seconds"] <= a["seconds"]  # equal when the first token is the end
    if a["completion_tokens"] > 1:
        expected = (a["completion_tokens"] - 1) / (a["seconds"] - a["first_token_seconds"])
        assert abs(a["decode_tokens_per_s"] - expected) <= 0.01 * expected + 0.1


def test_generate_streams_the_prompt_and_completion_from_a_model_folder(lm_workspace: Path, tiny_model):
    out = llmkit(lm_workspace, "generate", str(tiny_model.path), "--prompt", "KING", "--max-new-tokens", "10",
                 "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("KING") and len(out.stdout.splitlines()[0]) >= 4
    assert "warning" not in out.stderr


def test_generate_says_which_prompt_characters_a_char_model_does_not_know(lm_workspace: Path, tiny_model):
    """A character-level model read them as <|unk|> without a word (Shakespeare has no 'é' and no '→')."""
    out = llmkit(lm_workspace, "generate", "tiny-lm", "--prompt", "café → KING", "--max-new-tokens", "4",
                 "--temperature", "0", "--json")
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "2 character(s)" in warning[0] and "'é'" in warning[0] and "'→'" in warning[0], out.stderr
    assert "<|unk|>" in warning[0] and json.loads(out.stdout)["prompt"] == "café → KING"


def test_generate_with_a_bad_temperature_or_unknown_model_is_a_user_error(lm_workspace: Path, tiny_model, cli_here):
    def llmkit(workspace: Path, *args: str):  # in this process: each is said before any model loads
        return cli_here(*args, workspace=workspace)

    bad = llmkit(lm_workspace, "generate", "tiny-lm", "--prompt", "x", "--temperature", "-1")
    assert bad.returncode == 2 and "generate.temperature" in bad.stderr
    missing = llmkit(lm_workspace, "generate", "no-such-model", "--prompt", "x")
    assert missing.returncode == 2 and "no-such-model" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    typo = llmkit(lm_workspace, "generate", "tiny-lmm", "--prompt", "x")
    assert typo.returncode == 2 and "did you mean 'tiny-lm'?" in typo.stderr
    encoder = llmkit(lm_workspace, "generate", "minilm-l6", "--prompt", "x")  # it crashed: KeyError: 'cache', exit 1
    assert encoder.returncode == 2 and encoder.stderr.strip() == (
        "error: minilm-l6 is an encoder without a language-model head; generate takes causal language models "
        "(smollm2-135m is one built in)"), encoder.stderr


def test_chat_answers_each_line_until_an_empty_one(lm_workspace: Path, tiny_model):
    out = llmkit(lm_workspace, "chat", "tiny-lm", "--max-new-tokens", "8", "--seed", "1", "--json",
                 stdin="Hello there\nHow are you\n\n")
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout[out.stdout.index("{"):])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_chat_ends_on_bye_and_forgets_the_conversation_on_clear(lm_workspace: Path, tiny_model):
    # "/exit" was sent to the model as a message; /clear keeps the system message only
    out = llmkit(lm_workspace, "chat", "tiny-lm", "--max-new-tokens", "4", "--seed", "1", "--json", "--system", "Be brief",
                 stdin="Hello there\n/clear\nHow are you\n/exit\nnever sent\n")
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout[out.stdout.index("{"):])["messages"]
    assert [(m["role"], m["content"]) for m in messages][:2] == [("system", "Be brief"), ("user", "How are you")]
    assert len(messages) == 3 and "conversation cleared" in out.stdout + out.stderr
