"""`llmkit train sft | classify | distill`, `merge` and `predict` through the console entry point."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli  # the end-to-end run as users run it; the checks below use cli_here


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    return " ".join(lines)


def test_sft_lora_then_merge_then_generate(lm_workspace: Path, tiny_model, chat_data):
    sft = run_cli("train", "sft", "--base", "tiny-lm", "--data", chat_data, "--method", "lora", "--lora-r", "4",
                  "--target-modules", "q_proj,v_proj", "--max-steps", "4", "--batch-size", "4", "--max-length", "128",
                  "--lr", "1e-2", "--skip-bad", "--name", "cli-sft", "--json", workspace=lm_workspace)
    assert sft.returncode == 0, sft.stderr
    result = json.loads(sft.stdout)
    adapter = json.loads((Path(result["path"]) / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["r"] == 4
    assert result["metrics"]["trainable_parameters"] < result["metrics"]["total_parameters"]
    merged = run_cli("merge", "cli-sft", "--json", workspace=lm_workspace)
    assert merged.returncode == 0, merged.stderr
    assert (Path(json.loads(merged.stdout)["path"]) / "model.safetensors").exists()
    # An adapter generates directly, its base loaded underneath. The tiny model's greedy text is all spaces, so a
    # seeded sample is compared: the same as the merged model's, not the base's (the adapter applied, lr 1e-2 so
    # that 4 steps move it enough).
    text = run_cli("generate", "cli-sft", "--prompt", "<|user|>\nHi", "--max-new-tokens", "24", "--temperature", "1",
                   "--seed", "1", "--json", workspace=lm_workspace)
    assert text.returncode == 0, text.stderr
    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm, resolve_model

    def sample(model: str) -> str:
        lm, tok = load_causal_lm(resolve_model(model))
        return generate(lm, tok, "<|user|>\nHi", max_new_tokens=24, temperature=1.0, seed=1).text

    adapter_text = json.loads(text.stdout)["text"]
    assert len(adapter_text) == 24 and adapter_text == sample(json.loads(merged.stdout)["path"])
    assert adapter_text != sample(str(tiny_model.path))


def test_fine_tuning_mistakes_are_one_line_user_errors(lm_workspace: Path, tiny_model, chat_data, sms_data, cli_here):
    # In this process (cli_here): each mistake is said before anything heavy runs; an interpreter start for each
    # cost more than the check
    qlora = _one_line_error(cli_here("train", "sft", "--base", "tiny-lm", "--data", chat_data, "--method", "qlora",
                                    workspace=lm_workspace))
    assert "needs a CUDA GPU" in qlora and "--method lora" in qlora
    targets = _one_line_error(cli_here("train", "sft", "--base", "tiny-lm", "--data", chat_data, "--target-modules", "attn",
                                      workspace=lm_workspace))
    assert "attn matches no module" in targets and "q_proj" in targets and "down_proj" in targets
    kind = _one_line_error(cli_here("train", "classify", "--base", "tiny-lm", "--data", chat_data, workspace=lm_workspace))
    assert "'chat' dataset" in kind and "--task classify" in kind
    both = _one_line_error(cli_here("train", "distill", "--teacher", "tiny-lm", "--data", "tiny", workspace=lm_workspace))
    assert "exactly one of --student" in both
    resume = _one_line_error(cli_here("train", "classify", "--resume", "no-such-run", workspace=lm_workspace))
    assert "classify.resume" in resume
    method = _one_line_error(cli_here("train", "classify", "--data", sms_data, "--method", "qlora", workspace=lm_workspace))
    assert "classify.method" in method


def test_predict_texts_and_files(lm_workspace: Path, sms_classifier, tiny_model, tmp_path: Path, cli_here):
    texts = tmp_path / "texts.txt"
    texts.write_text("URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010\n\nare we still on for lunch?\n", encoding="utf-8")
    out = cli_here("predict", "sms-clf", "--file", str(texts), "hello there", "--json", workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["text"] for r in rows][1:] == ["URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010", "are we still on for lunch?"]
    assert rows[1]["label"] == "spam" and rows[2]["label"] == "ham"
    table = cli_here("predict", "sms-clf", "see you at 6", workspace=lm_workspace)
    assert table.returncode == 0 and "ham" in table.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    assert f"{bad}:2" in _one_line_error(cli_here("predict", "sms-clf", "--file", str(bad), workspace=lm_workspace))
    lm = _one_line_error(cli_here("predict", "tiny-lm", "hello", workspace=lm_workspace))
    assert "not a classifier" in lm


def test_predict_files_a_windows_editor_wrote_and_an_empty_one(lm_workspace: Path, sms_classifier, tmp_path: Path, cli_here):
    txt, jsonl, empty = tmp_path / "bom.txt", tmp_path / "bom.jsonl", tmp_path / "empty.txt"
    txt.write_bytes(b"\xef\xbb\xbfwin cash now\r\nhello\r\n")
    jsonl.write_bytes(b'\xef\xbb\xbf{"text": "win cash"}\r\n')
    empty.write_bytes(b"\n\n")
    out = cli_here("predict", "sms-clf", "--file", str(txt), "--json", workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    assert [r["text"] for r in json.loads(out.stdout)] == ["win cash now", "hello"]  # no BOM glued to the first
    out = cli_here("predict", "sms-clf", "--file", str(jsonl), "--json", workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    assert [r["text"] for r in json.loads(out.stdout)] == ["win cash"]
    line = _one_line_error(cli_here("predict", "sms-clf", "--file", str(empty), workspace=lm_workspace))
    assert f"{empty}: no text in it" in line


def test_config_show_lists_the_fine_tuning_sections(lm_workspace: Path, cli_here):
    for section, key in (("sft", "target_modules"), ("classify", "class_weights"), ("distill", "temperature")):
        out = cli_here("config", "show", section, workspace=lm_workspace)
        assert out.returncode == 0 and f"{key}:" in out.stdout
