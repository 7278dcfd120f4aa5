"""Quantization: codes and packing, each method saved and loaded back through llmkit's loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from llmkit.config import EvalConfig, QuantizeConfig
from llmkit.errors import UserError
from llmkit.eval import evaluate
from llmkit.generate import generate
from llmkit.models import native_kernel
from llmkit.models.io import load_causal_lm, resolve_model
from llmkit.models.quantized import (
    QuantLinear,
    pack_int4,
    quantize_tensor,
    quantize_tensor_zero_point,
    unpack_int4,
)
from llmkit.models.quantized_matmul import Int8BlockPacked, Int8DynamicPacked
from llmkit.optimize.quantize import quantize
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def test_int4_packing_round_trips_and_group_scales_bound_the_error():
    w = torch.randn(8, 64)
    codes, scales = quantize_tensor(w, 4, 32)
    assert codes.min() >= -8 and codes.max() <= 7 and scales.shape == (8, 2)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    error = (codes.reshape(8, 2, 32).float() * scales[..., None]).reshape(8, 64) - w
    assert float(error.abs().max()) <= float(scales.max()) / 2 + 1e-6


def test_int4_zero_point_codes_span_each_groups_range():
    w = torch.randn(8, 64) + torch.linspace(0, 3, 64)  # groups far from centred on 0
    codes, scales, zeros = quantize_tensor_zero_point(w, 4, 32)
    assert codes.min() >= -8 and codes.max() <= 7 and scales.shape == zeros.shape == (8, 2)
    error = (codes.reshape(8, 2, 32).float() * scales[..., None] + zeros[..., None]).reshape(8, 64) - w
    assert float(error.abs().max()) <= float(scales.max()) / 2 + 1e-6
    sym_codes, sym_scales = quantize_tensor(w, 4, 32)  # symmetric wastes the levels below each group's minimum
    assert float(scales.max()) < float(sym_scales.max())


def _float_linears(lm) -> dict[str, torch.nn.Linear]:
    """The layers quantize must replace: every nn.Linear but the output head."""
    head = lm.get_output_embeddings()
    return {n: m for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight", "int4-weight"])
def test_each_method_quantizes_every_linear_layer_but_the_head_and_loads_back_close_to_the_original(lm_workspace: Path, tiny_model, method):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    groups = {} if method == "int8-dynamic" else {"group_size": 32}  # int8-dynamic: one scale per row
    q, _ = quantize("tiny-lm", QuantizeConfig(method=method, table=False, name=f"tiny-{method}", **groups), ws, reg)
    assert (q.path / "model.safetensors").stat().st_size < (tiny_model.path / "model.safetensors").stat().st_size
    original, _ = load_causal_lm(tiny_model)
    expected = _float_linears(original)
    assert len(expected) == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 blocks
    bits = {"int8-dynamic": 8, "int8-weight": 8, "int4-weight": 4}[method]
    info = q.lineage["quantization"]
    assert (info["method"], info["bits"], info["group_size"], sorted(info["modules"])) == (
        method, bits, groups.get("group_size"), sorted(expected))
    saved = load_file(str(q.path / "model.safetensors"))
    assert all(f"{n}.qweight" in saved and f"{n}.weight" not in saved for n in expected)
    assert all(saved[f"{n}.scales"].dtype == torch.float32 for n in expected)  # the README's format: fp32 scales
    assert all((f"{n}.zeros" in saved) == (method == "int4-weight") for n in expected)

    lm, tok = load_causal_lm(resolve_model(q.id, reg))
    modules = dict(lm.named_modules())
    head, int8_head = modules["lm_head"], method == "int8-weight" and native_kernel.available()
    # exact types: a float nn.Linear left where a quantized layer belongs must fail, so no isinstance/name matching
    assert {n for n, m in modules.items() if type(m) is torch.nn.Linear} == (set() if int8_head else {"lm_head"})
    if int8_head:
        # int8-weight runs the head in blocks of int8 too, as q8_0 does: the file's fp16 head, quantized at load
        stored = saved.get("lm_head.weight", saved["model.embed_tokens.weight"]).float()
        assert type(head) is QuantLinear and (head.bits, head.group, head.dynamic) == (8, 32, False)
        assert "lm_head.qweight" not in saved and torch.equal(head.qweight, quantize_tensor(stored, 8, 32)[0])
        assert torch.equal(lm.get_input_embeddings().weight, stored)  # the embeddings stay as stored
        assert type(head.packed()) is Int8BlockPacked
    # codes and scales as configured (int8-dynamic: one scale per row), equal to quantizing the original weights
    assert {n for n, m in modules.items() if type(m) is QuantLinear} - {"lm_head"} == set(expected)
    for n, lin in expected.items():
        m = modules[n]
        group = lin.in_features if method == "int8-dynamic" else 32
        assert (m.bits, m.group, m.dynamic) == (bits, group, method == "int8-dynamic")
        assert m.qweight.dtype == (torch.uint8 if bits == 4 else torch.int8)
        if bits == 4:  # int4 with a zero point per group (llmkit.json says so); int8 symmetric
            codes, scales, zeros = quantize_tensor_zero_point(lin.weight.data, bits, group)
            assert info["zero_point"] and torch.equal(m.zeros, zeros)
        else:
            codes, scales = quantize_tensor(lin.weight.data, bits, group)
            assert not info["zero_point"] and m.zeros is None
        assert torch.equal(unpack_int4(m.qweight) if bits == 4 else m.qweight, codes)
        assert m.scales.shape == (lin.out_features, lin.in_features // group) and torch.equal(m.scales, scales)
    if method == "int8-dynamic":  # the forward quantizes its input to int8 as well: not the weight-only result
        m = modules[next(iter(expected))]
        x = torch.randn(3, m.in_features)
        y, exact = m(x), F.linear(x, m.weight_float())
        assert type(m.packed()) is Int8DynamicPacked
        assert 0 < float((y - exact).abs().max()) <= 0.05 * float(exact.abs().max())
    base = evaluate("tiny-lm", EvalConfig(data="tiny", split="val", context=32), ws, reg).metrics["perplexity"]
    quant = evaluate(q.id, EvalConfig(data="tiny", split="val", context=32), ws, reg).metrics["perplexity"]
    assert abs(quant - base) / base < (0.01 if method.startswith("int8") else 0.05)
    assert generate(lm, tok, "ROMEO:", max_new_tokens=5, temperature=0).token_ids
    assert dict(reg.parents(q.id))["quantized_from"].id == tiny_model.id


def test_int8_dynamic_refuses_a_group_size_it_would_not_use(lm_workspace: Path, tiny_model):
    """int8-dynamic scales each row whole: --group-size 32 with it was accepted, ignored, and written to llmkit.json
    as if the codes were in groups of 32. Refused before anything is written; the default (a config file from
    `config show quantize`) is no conflict."""
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    with pytest.raises(UserError, match=r"^quantize.group_size = 32: int8-dynamic scales each row whole"):
        quantize("tiny-lm", QuantizeConfig(method="int8-dynamic", group_size=32, table=False, name="dyn"), ws, reg)
    assert not reg.list("model", name="dyn") and not list((ws.root / "models").glob("dyn*"))
    q, _ = quantize("tiny-lm", QuantizeConfig(method="int8-dynamic", group_size=64, table=False, name="dyn"), ws, reg)
    assert q.lineage["quantization"]["group_size"] is None


def test_the_same_quantization_again_returns_the_version_made_before(lm_workspace: Path, tiny_model):
    # the model is registered before its table is measured: a re-run after a Ctrl-C there (or to see the table
    # again) registered one identical version more each time
    import shutil

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    cfg = QuantizeConfig(method="int8-weight", group_size=32, table=False, name="again")
    first, _ = quantize("tiny-lm", cfg, ws, reg)
    second, _ = quantize("tiny-lm", cfg, ws, reg)
    assert (second.id, second.version) == (first.id, 1) and len(reg.list("model", name="again")) == 1
    other, _ = quantize("tiny-lm", QuantizeConfig(method="int4-weight", group_size=32, table=False, name="again"), ws, reg)
    assert other.version == 2  # other settings: another model
    shutil.rmtree(first.path)  # its folder gone: made again, not pointed at
    third, _ = quantize("tiny-lm", cfg, ws, reg)
    assert third.version == 3 and (third.path / "model.safetensors").exists()
