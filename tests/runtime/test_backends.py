"""One rule picks the backend for a model, with one spelling per backend (older spellings still read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import BenchModelConfig, ServeConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.registry import Registry
from llmkit.runtime.backends import BACKENDS, backend_name, choose_backend, load_backend


def test_auto_picks_the_runtime_of_the_models_own_files_and_a_named_backend_is_kept(lm_workspace: Path, tiny_model,
                                                                                     tmp_path: Path):
    lm = resolve_model("tiny-lm", Registry.for_workspace(lm_workspace))
    assert choose_backend(lm) == choose_backend(lm, "auto") == "torch"
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "llmkit.json").write_text(json.dumps({"gguf": "model.gguf"}))
    assert choose_backend(Model(gguf, "g")) == "llama.cpp"
    assert choose_backend(Model(tmp_path, "x", lineage={"format": "gguf"})) == "llama.cpp"
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"")
    assert choose_backend(Model(onnx, "o")) == "onnx"
    (onnx / "model.safetensors").write_bytes(b"")  # torch weights beside it: torch runs it
    assert choose_backend(Model(onnx, "o")) == "torch"
    assert choose_backend(Model(gguf, "g"), "torch") == "torch" and choose_backend(lm, "llamacpp") == "llama.cpp"
    backend = load_backend("auto", lm)
    assert backend.name == "torch" and backend.vocab_size == backend.lm.config.vocab_size


def test_one_spelling_per_backend_old_ones_still_read_unknown_ones_refused():
    assert set(BACKENDS) == {"torch", "llama.cpp", "onnx"}
    assert backend_name("llamacpp") == backend_name("llama_cpp") == backend_name("llama.cpp") == "llama.cpp"
    assert ServeConfig(backend="llamacpp").backend == "llama.cpp" == BenchModelConfig(backend="llamacpp").backend
    assert BenchModelConfig().backend == ServeConfig().backend == "auto"
    with pytest.raises(UserError, match=r"unknown backend 'gguf'; backends: llama.cpp, onnx, torch \(or auto\)"):
        backend_name("gguf")
