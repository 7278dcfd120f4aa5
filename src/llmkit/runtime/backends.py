"""Backends: what runs a causal LM, behind one interface on token ids.

A backend loads a model and exposes `prefill(ids, capacity) -> (state, logits)` and
`step(state, token) -> logits` for one sequence. The torch backend runs llmkit's decoder (the fast
Llama path when it applies); llama.cpp runs GGUF exports; onnxruntime runs ONNX exports. Anything
else registers itself with `register_backend`. `choose_backend` is the one rule that picks a
backend for a model, used by eval, bench and serve alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import torch

from llmkit.config import BACKEND_ALIASES
from llmkit.errors import UserError
from llmkit.models.io import Model


class Backend(Protocol):
    name: str
    vocab_size: int
    max_len: int | None

    def prefill(self, ids: list[int], capacity: int) -> tuple[Any, torch.Tensor]: ...

    def step(self, state: Any, token: int) -> torch.Tensor: ...

    # A runtime whose generation is one call (Hugging Face `generate`) defines instead
    # `generate_greedy(ids, new_tokens) -> float`: it generates and returns the perf_counter time of its first new
    # token, so its prefill and decode are timed in the same window as everyone else's.


class TorchBackend:
    """Any causal LM llmkit can load, on llmkit's decode loop (KV cache; the fast Llama path when it applies)."""

    name = "torch"

    def __init__(self, model: Model):
        from llmkit.models.io import load_causal_lm
        from llmkit.runtime.decoder import get_decoder

        self.lm, self.tokenizer = load_causal_lm(model)
        self.decoder = get_decoder(self.lm)
        self.vocab_size = self.lm.config.vocab_size
        self.max_len = self.decoder.max_len

    def prefill(self, ids: list[int], capacity: int):
        return self.decoder.prefill(ids, capacity=capacity)

    def step(self, state, token: int) -> torch.Tensor:
        return self.decoder.step([state], [token])[0]


def _llama_cpp(model: Model) -> Backend:
    from llmkit.runtime.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(model)


def _onnx(model: Model) -> Backend:
    from llmkit.runtime.onnx import OnnxBackend

    return OnnxBackend(model)


BACKENDS: dict[str, Callable[[Model], Backend]] = {"torch": TorchBackend, "llama.cpp": _llama_cpp, "onnx": _onnx}

def register_backend(name: str, factory: Callable[[Model], Backend]) -> None:
    BACKENDS[name] = factory


def backend_name(requested: str) -> str:
    """The one spelling of a backend name ('auto' stays 'auto')."""
    name = BACKEND_ALIASES.get(requested, requested)
    if name != "auto" and name not in BACKENDS:
        raise UserError(f"unknown backend '{requested}'; backends: {', '.join(sorted(BACKENDS))} (or auto)")
    return name


def export_info(model: Model) -> dict[str, Any]:
    file = model.path / "llmkit.json"
    return json.loads(file.read_text()) if file.exists() else {}


def choose_backend(model: Model, requested: str = "auto") -> str:
    """The backend that runs `model`: the one asked for, or with 'auto' the runtime of the model's own
    files: a GGUF export runs on llama.cpp, an ONNX export (no safetensors beside it) on onnxruntime,
    anything else on torch."""
    name = backend_name(requested)
    if name != "auto":
        return name
    fmt = (model.lineage or {}).get("format")
    if fmt == "gguf" or export_info(model).get("gguf"):
        return "llama.cpp"
    if fmt == "onnx" or ((model.path / "model.onnx").exists() and not any(model.path.glob("*.safetensors"))):
        return "onnx"
    return "torch"


def load_backend(name: str, model: Model) -> Backend:
    name = choose_backend(model, name)
    return BACKENDS[name](model)


def load_classifier_on_runtime(model: Model):
    """(classifier, tokenizer, labels) on the runtime of the model's own files: onnxruntime for an ONNX export
    (`OnnxClassifier`, called as the torch classifier is), torch for anything else."""
    from llmkit.models.io import load_classifier, load_tokenizer_for

    if choose_backend(model) == "onnx":
        from llmkit.runtime.onnx import OnnxClassifier

        clf = OnnxClassifier(model)
        return clf, load_tokenizer_for(model), clf.labels
    return load_classifier(model)
