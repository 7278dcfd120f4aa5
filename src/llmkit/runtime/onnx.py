"""ONNX exports on onnxruntime: causal LMs behind the backend interface, classifiers called as torch's are."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.models.io import Model
from llmkit.models.kind import exported_from


class OnnxBackend:
    """Whole-sequence decoding on onnxruntime (no KV cache): the eval/bench interface for ONNX exports."""

    name = "onnx"

    def __init__(self, model: Model):
        import onnxruntime as ort

        if not (model.path / "model.onnx").exists():
            source = exported_from(model)
            raise UserError(f"{model.ref} is not an ONNX export (no model.onnx in {model.path}); make one with: "
                            f"llmkit export {source} --format onnx, or leave --backend to auto")
        config = json.loads((model.path / "config.json").read_text())
        self.vocab_size, self.max_len = config["vocab_size"], config.get("max_position_embeddings")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch would use: same work
        self.session = ort.InferenceSession(str(model.path / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def _run(self, ids: list[int]) -> torch.Tensor:
        x = np.asarray([ids], dtype=np.int64)
        logits = self.session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        return torch.from_numpy(logits[0, -1].copy())

    def prefill(self, ids: list[int], capacity: int):
        state = list(ids)
        return state, self._run(state)

    def step(self, state: list[int], token: int) -> torch.Tensor:
        state.append(token)
        return self._run(state)


class OnnxLM:
    """Just enough of a causal LM for llmkit.eval.lm on onnxruntime: `config`, `parameters()` and
    `model(input_ids=..., attention_mask=...).logits`, so that `llmkit eval` and `compare` score an ONNX export's
    perplexity from its own logits, as they score a GGUF's from llama.cpp's (`GgufLM`)."""

    def __init__(self, model: Model):
        self.backend = OnnxBackend(model)  # the same session and checks
        self.config = SimpleNamespace(**json.loads((model.path / "config.json").read_text()))
        self._device = torch.zeros(0)

    def parameters(self):
        yield self._device  # llmkit.eval.lm asks for the device

    def eval(self):
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        x = input_ids.cpu().numpy().astype(np.int64)
        mask = np.ones_like(x) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)
        logits = self.backend.session.run(["logits"], {"input_ids": x, "attention_mask": mask})[0]  # (B, T, vocab)
        return SimpleNamespace(logits=torch.from_numpy(logits))


class OnnxClassifier(OnnxLM):
    """A classifier export on onnxruntime, called as the torch classifier is (`clf(input_ids=..., attention_mask=...)
    .logits`, `config`, `parameters()`, `to()`), so that eval, bench-model and predict run it unchanged; `labels`
    in the order of its logits, from the config.json the export copied."""

    def __init__(self, model: Model):
        super().__init__(model)
        id2label = getattr(self.config, "id2label", None) or {}
        self.labels = [id2label[str(i)] for i in range(len(id2label))]

    def to(self, *_, **__):
        return self  # onnxruntime's CPU session: nowhere to move

