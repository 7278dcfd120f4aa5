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


def test_a_built_in_models_name_is_refused_given_or_derived(tmp_path, cli_here):
    """`import ~/.cache/llmkit/smollm2-135m` (a copy of the built-in's folder) registered 'smollm2-135m': `show` then read
    the import and `chat`, `eval` the built-in, the registered one reachable by id only."""
    tok = tiny_lm.char_tokenizer()
    folder = tmp_path / "smollm2-135m"
    tiny_lm.train_tiny(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    ws = tmp_path / "ws"
    derived = cli_here("import", str(folder), workspace=ws)
    assert derived.returncode == 2 and derived.stderr.strip() == (
        "error: model name 'smollm2-135m' is a built-in model's (every command reads 'smollm2-135m' as the built-in); it "
        "is the name of the folder or file; pass --name, e.g. --name my-smollm2-135m")
    given = cli_here("import", str(folder), "--name", "minilm-l6", workspace=ws)
    assert given.returncode == 2 and given.stderr.strip().endswith("as the built-in); choose another --name")
    assert not (ws / "models").exists() or not any((ws / "models").iterdir())
    assert cli_here("import", str(folder), "--name", "my-smollm2-135m", workspace=ws).returncode == 0
