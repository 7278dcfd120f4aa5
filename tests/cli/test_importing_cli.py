"""`llmkit import` through the CLI: a folder registered and usable by name; a refusal is exit 2, one line."""

from __future__ import annotations

import json

from tests import tiny_lm
from tests.conftest import run_cli


def test_import_a_folder_then_generate_from_it(tmp_path):
    tok = tiny_lm.char_tokenizer()
    folder = tmp_path / "Tiny-LM"
    tiny_lm.train_tiny(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    ws = tmp_path / "ws"
    proc = run_cli("import", str(folder), "--json", workspace=ws)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["name"] == "tiny-lm" and result["architecture"] == "LlamaForCausalLM" and not result["existed"]
    gen = run_cli("generate", "tiny-lm", "--prompt", "the cat", "--max-new-tokens", "5", "--temperature", "0", "--json",
                  workspace=ws)
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["completion_tokens"] == 5

    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    refused = run_cli("import", str(folder), "--name", "other", workspace=ws)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "auto_map" in lines[0]
