"""Memory fit at start: what each model takes (weights, KV cache of a full batch at full context, prefix cache) is
stated; a configuration that cannot fit is refused before anything loads, with one line naming a --max-batch or
--max-context that does fit (checked: the advice, applied, fits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmkit.config import ServeConfig
from llmkit.errors import UserError
from llmkit.models.io import resolve_model
from llmkit.serve.memory_fit import check, need, needs_of


def test_smollm2_needs_add_up(smollm2):
    cfg = ServeConfig(models=["smollm2-135m"], max_batch=4, prefix_cache_mb=64)
    n = need(resolve_model("smollm2-135m"), "torch", "causal", cfg, workers=2)
    # 30 layers x K and V x 3 KV heads x 64 dims x 4 bytes (fp32) per token, 8,192 tokens, 2 workers x 4 rows
    assert n.context == 8192 and n.rows == 8
    assert n.kv == 30 * 2 * 3 * 64 * n.kv_per_sequence // (30 * 2 * 3 * 64) * 8
    assert n.kv_per_sequence in (30 * 2 * 3 * 64 * 4 * 8192, 30 * 2 * 3 * 64 * 2 * 8192)
    assert n.prefix == 64 * 2**20 and n.weights > 100 * 2**20
    # torch serves a causal LM twice over: its weights as loaded and the fast decoder's copy in its own layout
    files = sum(p.stat().st_size for p in Path(resolve_model("smollm2-135m").path).rglob("*.safetensors"))
    assert n.weights == 2 * files
    assert need(resolve_model("smollm2-135m"), "onnx", "causal", cfg, workers=1).weights == files
    capped = need(resolve_model("smollm2-135m"), "torch", "causal", cfg.model_copy(update={"max_context": 1024}), 2)
    assert capped.kv * 8 == n.kv, "--max-context caps the KV cache"
    ref = resolve_model("smollm2-135m").ref  # each line named as served (`a=M b=M` were both M)
    named = needs_of(ServeConfig(models=["a=smollm2-135m", "b=smollm2-135m", "smollm2-135m"]), None)
    assert [x.model for x in named] == [f"a ({ref})", f"b ({ref})", ref]


def test_a_configuration_that_cannot_fit_is_refused_with_what_would(smollm2):
    cfg = ServeConfig(models=["smollm2-135m"], max_batch=64)
    needs = needs_of(cfg, None)
    free = sum(n.weights + n.prefix for n in needs) + needs[0].kv // 10  # room for a tenth of the batch's KV
    with pytest.raises(UserError) as err:
        check(needs, cfg, free=free)
    message = str(err.value)
    assert "\n" not in message and "GiB is available" in message
    batch = int(re.search(r"--max-batch (\d+)", message).group(1))
    context = int(re.search(r"--max-context (\d+)", message).group(1))
    assert 1 <= batch < 64
    for fix in ({"max_batch": batch}, {"max_context": context}):
        fixed = cfg.model_copy(update=fix)
        assert "in all up to" in check(needs_of(fixed, None), fixed, free=free), fix


def test_serve_refuses_before_loading(lm_workspace, smollm2):
    from llmkit.registry import Registry
    from llmkit.serve import build_app
    from llmkit.workspace import Workspace

    ws = Workspace.open(lm_workspace)
    cfg = ServeConfig(models=["smollm2-135m"], max_batch=512, workers=2)
    with pytest.raises(UserError, match=r"GiB is available; try --max-batch \d+") as err:
        build_app(cfg, ws, Registry.for_workspace(ws.root))
    assert "\n" not in str(err.value)


def test_a_small_total_is_said_in_mib():
    """4 MiB in all read "up to 0.0 GiB"."""
    from llmkit.serve.memory_fit import Need, describe

    tiny = Need("tiny", weights=2 * 2**20, kv=2 * 2**20, rows=2, context=64)
    assert describe([tiny], 20 * 2**30).endswith("in all up to 4 MiB of 20.0 GiB available")
    big = Need("big", weights=3 * 2**30, rows=2, context=64)
    assert describe([big], 20 * 2**30).endswith("in all up to 3.0 GiB of 20.0 GiB available")


def test_a_model_without_a_kv_cache_is_said_without_one():
    """An encoder's line read "KV cache up to 0 MiB (0 rows x 0 tokens)"."""
    from llmkit.serve.memory_fit import Need, describe

    line = describe([Need("minilm-l6", weights=87 * 2**20, rows=0, context=0)], 20 * 2**30)
    assert line.startswith("memory: minilm-l6: weights 87 MiB; in all up to") and "KV cache" not in line, line
    line = describe([Need("lm", weights=2**20, kv=3 * 2**20, rows=2, context=64)], 20 * 2**30)
    assert "lm: weights 1 MiB, KV cache up to 3 MiB (2 rows x 64 tokens);" in line, line


def test_an_adapter_served_alone_needs_its_base_too(lm_workspace, serve_lm):
    # `serve ADAPTER` loads its base with it: the fit counted the adapter's 9 MiB and left out the base
    import torch
    from peft import LoraConfig, get_peft_model

    from llmkit.models.io import load_causal_lm
    from llmkit.registry import Registry
    from llmkit.train.lora import save_adapter
    from llmkit.workspace import Workspace

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    base = resolve_model(serve_lm, registry)
    lm, tok = load_causal_lm(base)
    torch.manual_seed(3)
    folder = ws.new_folder("models", "fit-adapter")
    save_adapter(get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])), tok, folder,
                 base, {"base": {"path": str(base.path), "ref": base.ref}, "task": "causal-lm"})
    adapter = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    alone, = needs_of(ServeConfig(models=[str(folder)], max_batch=2), registry)
    with_base = needs_of(ServeConfig(models=[serve_lm, str(folder)], max_batch=2), registry)
    base_need = with_base[0]
    assert alone.weights == base_need.weights + adapter and alone.kv == base_need.kv > 0
    assert with_base[1].weights == adapter and with_base[1].kv == 0  # on the base served beside it: its own only
