"""`llmkit export --format onnx`: a causal LM or classifier as ONNX, checked with onnxruntime.

The graph takes `input_ids` and `attention_mask` (int64, batch x sequence, both dynamic) and returns
`logits`; no KV cache (whole-sequence scoring, classification, or simple decoding). Exported with
torch.onnx's dynamo exporter from a batch-2 example (a batch-1 example would pin that axis), then
run in onnxruntime at batch 1 and 2 against PyTorch: the largest |logit difference| is recorded and
must stay within 1e-4.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.models.io import Model, is_adapter

TOLERANCE = 1e-4


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _example(vocab: int, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    return ids, mask


def parity(session, wrapper, vocab: int, max_len: int) -> float:
    """Largest |logit difference| between onnxruntime and PyTorch at batch 1 and 2."""
    worst = 0.0
    for batch, seq in ((1, min(7, max_len)), (2, min(13, max_len))):
        ids, mask = _example(vocab, batch, seq, seed=batch)
        with torch.no_grad():
            want = wrapper(ids, mask).float().numpy()
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def write_onnx(model: Model, tmp: Path, classifier: bool, int8: bool = False) -> dict[str, Any]:
    import onnxruntime as ort

    from llmkit.models.io import load_causal_lm, load_classifier

    if is_adapter(model.path):
        raise UserError(f"{model.ref} is a LoRA adapter; merge it first (llmkit merge {model.name}) and export the merged model")
    if classifier:
        net, tokenizer, _ = load_classifier(model)
    else:
        net, tokenizer = load_causal_lm(model)
    if (model.lineage or {}).get("quantization"):
        raise UserError(f"{model.ref} is quantized with llmkit's own format; export the float model to ONNX")
    net.eval()
    wrapper = _Logits(net).eval()
    vocab = net.config.vocab_size
    max_len = getattr(net.config, "max_position_embeddings", 512)
    ids, mask = _example(vocab, 2, min(16, max_len), seed=0)
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=max_len)
    with _quiet_exporter():
        try:
            program = torch.onnx.export(wrapper, (ids, mask), dynamo=True, input_names=["input_ids", "attention_mask"],
                                        output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                                                 "attention_mask": {0: batch, 1: seq}},
                                        verbose=False)
        except Exception as err:  # the exporter's errors are long; the first line says what failed
            raise UserError(f"ONNX export of {model.ref} failed: {str(err).splitlines()[0][:300]}") from None
        program.save(str(tmp / "model.onnx"), external_data=False)
    session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    diff = parity(session, wrapper, vocab, max_len)
    if diff > TOLERANCE:
        raise UserError(f"ONNX export of {model.ref} disagrees with PyTorch by {diff:.2e} (> {TOLERANCE:g}); not written")
    extra = {}
    if int8:  # onnxruntime's own dynamic quantization: a quarter of the size, faster matmuls on CPUs
        from onnxruntime.quantization import QuantType, quantize_dynamic

        del session
        with _quiet_exporter():
            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
        os.replace(tmp / "model.int8.onnx", tmp / "model.onnx")
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        extra = {"quant": "int8-dynamic", "int8_max_abs_logit_diff": parity(session, wrapper, vocab, max_len)}
    tokenizer.save_pretrained(str(tmp))
    for file in model.path.glob("*.json"):
        if file.name not in ("llmkit.json",) and not (tmp / file.name).exists():
            shutil.copy2(file, tmp / file.name)
    return {"max_abs_logit_diff": diff, "onnx": "model.onnx", "opset": _opset(tmp / "model.onnx"), **extra}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notices (torchvision ops skipped, deprecations, axis renames) are not the user's to act on."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _opset(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
