"""GPT-2's projections are Conv1D (a linear layer with its weight stored (in, out)): quantize and prune take them
like nn.Linear. They did nothing to a GPT-2 and registered an "int8" model of fp16 weights (prune divided by zero)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from llmkit.config import PruneConfig, QuantizeConfig
from llmkit.models.io import load_causal_lm, resolve_model
from llmkit.models.quantized import QuantLinear
from llmkit.optimize.prune import prune
from llmkit.optimize.quantize import quantize
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tiny_model) -> Path:
    """A tiny random GPT-2 with the tiny model's tokenizer, as transformers saves it."""
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4))
    model.save_pretrained(folder)
    for file in tiny_model.path.iterdir():
        if "token" in file.name or file.name == "special_tokens_map.json":
            shutil.copy(file, folder / file.name)
    return folder


def _logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    lm, _ = load_causal_lm(resolve_model(str(path)))
    with torch.no_grad():
        return lm(input_ids=ids).logits


@pytest.mark.parametrize("method", ["int8-weight", "int4-weight"])
def test_a_gpt2_is_quantized_conv1d_layers_and_all(lm_workspace: Path, gpt2: Path, method):
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    q, _ = quantize(str(gpt2), QuantizeConfig(method=method, group_size=32, table=False, name=f"gpt2-{method}"), ws, registry)
    assert sorted(q.lineage["quantization"]["modules"]) == sorted(
        f"transformer.h.{i}.{part}" for i in range(2) for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    lm, _ = load_causal_lm(resolve_model(q.id, registry))
    assert not any(isinstance(m, Conv1D) for m in lm.modules())
    assert isinstance(lm.get_submodule("transformer.h.0.mlp.c_fc"), QuantLinear)
    ids = torch.randint(0, lm.config.vocab_size, (1, 24))
    with torch.no_grad():
        got = lm(input_ids=ids).logits
    want = _logits(gpt2, ids)
    # the quantized layers compute x @ W, as Conv1D does: a transposed weight would give unrelated logits
    assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > (0.999 if method == "int8-weight" else 0.98)


def test_a_gpt2_is_pruned_in_its_conv1d_layers(lm_workspace: Path, gpt2: Path):
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    pruned, _ = prune(str(gpt2), PruneConfig(method="magnitude", sparsity=0.5, pattern="2:4", table=False,
                                             name="gpt2-pruned"), ws, registry)
    per_layer = pruned.lineage["pruning"]["per_layer"]
    assert len(per_layer) == 8 and all(v == 0.5 for v in per_layer.values())
    lm, _ = load_causal_lm(resolve_model(pruned.id, registry))
    w = lm.get_submodule("transformer.h.0.mlp.c_fc").weight  # (in, out): 2 of every 4 inputs of each output are 0
    assert torch.equal((w.t().reshape(w.shape[1], -1, 4) == 0).sum(-1), torch.full((w.shape[1], w.shape[0] // 4), 2))
