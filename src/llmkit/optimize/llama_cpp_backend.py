"""A llama.cpp backend (llama-cpp-python) for GGUF exports, behind the eval/bench interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.models.io import Model


def gguf_file(model: Model) -> Path:
    info = json.loads((model.path / "llmkit.json").read_text()) if (model.path / "llmkit.json").exists() else {}
    name = info.get("gguf")
    if not name or not (model.path / name).exists():
        raise UserError(f"{model.ref} is not a GGUF export (no .gguf named in its llmkit.json); make one with: "
                        f"llmkit export {model.name} --format gguf")
    return model.path / name


def open_llama(path: Path, n_ctx: int, logits_all: bool = False):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("the llama.cpp backend needs llama-cpp-python, built portable: CMAKE_ARGS=\"-DGGML_NATIVE=OFF "
                        "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON\" pip install llama-cpp-python") from None
    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, n_threads=torch.get_num_threads(),
                 seed=0)


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, model: Model):
        config = json.loads((model.path / "config.json").read_text())
        self.max_len = config["max_position_embeddings"]
        self.vocab_size = config["vocab_size"]
        self.llm = open_llama(gguf_file(model), self.max_len)

    def _last_logits(self) -> torch.Tensor:
        # Without logits_all, llama-cpp-python keeps no scores; the context holds the last token's logits.
        return torch.from_numpy(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab_size,)).copy())

    def prefill(self, ids: list[int], capacity: int):
        self.llm.reset()
        self.llm.eval(ids)
        return None, self._last_logits()

    def step(self, state, token: int) -> torch.Tensor:
        self.llm.eval([token])
        return self._last_logits()


def greedy(backend: LlamaCppBackend, ids: list[int], new_tokens: int, eos: set[int] | None = None) -> list[int]:
    _, logits = backend.prefill(ids, len(ids) + new_tokens)
    out = []
    for i in range(new_tokens):
        tok = int(logits.argmax())
        out.append(tok)
        if (eos and tok in eos) or i == new_tokens - 1:
            break
        logits = backend.step(None, tok)
    return out


def register() -> None:
    from llmkit.eval.speed import register_backend

    register_backend("llama.cpp", LlamaCppBackend)


class GgufLM:
    """Just enough of a causal LM for llmkit.eval.lm: `config` and `model(input_ids=...).logits`, on llama.cpp.

    Each row is evaluated from an empty cache, so a window's logits see only that window, as in PyTorch.
    """

    def __init__(self, model: Model):
        from types import SimpleNamespace

        self.config = SimpleNamespace(**json.loads((model.path / "config.json").read_text()))
        self.llm = open_llama(gguf_file(model), self.config.max_position_embeddings, logits_all=True)
        self._device = torch.zeros(0)

    def parameters(self):
        yield self._device  # llmkit.eval.lm asks for the device

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        from types import SimpleNamespace

        rows = []
        for r, ids in enumerate(input_ids.tolist()):
            n = int(attention_mask[r].sum()) if attention_mask is not None else len(ids)
            self.llm.reset()
            self.llm.eval(ids[:n])
            logits = np.zeros((len(ids), self.config.vocab_size), dtype=np.float32)
            logits[:n] = np.array(self.llm.scores[:n])
            rows.append(torch.from_numpy(logits))
        return SimpleNamespace(logits=torch.stack(rows))
