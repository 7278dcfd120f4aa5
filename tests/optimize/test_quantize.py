"""Quantization: codes and packing, each method saved and loaded back through llmkit's loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmkit.config import EvalConfig, QuantizeConfig
from llmkit.eval import evaluate
from llmkit.generate import generate
from llmkit.models.io import load_causal_lm, resolve_model
from llmkit.optimize.quantize import QuantLinear, pack_int4, quantize, quantize_tensor, unpack_int4
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def test_int4_packing_round_trips_and_group_scales_bound_the_error():
    w = torch.randn(8, 64)
    codes, scales = quantize_tensor(w, 4, 32)
    assert codes.min() >= -8 and codes.max() <= 7 and scales.shape == (8, 2)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    error = (codes.reshape(8, 2, 32).float() * scales[..., None]).reshape(8, 64) - w
    assert float(error.abs().max()) <= float(scales.max()) / 2 + 1e-6


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight", "int4-weight"])
def test_each_method_loads_back_close_to_the_original(lm_workspace: Path, tiny_model, method):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    q, _ = quantize("tiny-lm", QuantizeConfig(method=method, group_size=32, table=False, name=f"tiny-{method}"), ws, reg)
    assert (q.path / "model.safetensors").stat().st_size < (tiny_model.path / "model.safetensors").stat().st_size
    lm, tok = load_causal_lm(resolve_model(q.id, reg))
    kinds = {type(m).__name__ for m in lm.modules()}
    assert ("DynamicQuantizedLinear" in str(kinds) or "Linear" in kinds) if method == "int8-dynamic" else QuantLinear.__name__ in kinds
    base = evaluate("tiny-lm", EvalConfig(data="tiny", split="val", context=32), ws, reg).metrics["perplexity"]
    quant = evaluate(q.id, EvalConfig(data="tiny", split="val", context=32), ws, reg).metrics["perplexity"]
    assert abs(quant - base) / base < (0.01 if method.startswith("int8") else 0.05)
    assert generate(lm, tok, "ROMEO:", max_new_tokens=5, temperature=0).token_ids
    assert dict(reg.parents(q.id))["quantized_from"].id == tiny_model.id
