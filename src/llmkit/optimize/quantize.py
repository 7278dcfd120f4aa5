"""`llmkit quantize`: int8 / int4 weights with group-wise scales, saved as safetensors in llmkit's
quantized format (described, and read back, in `llmkit.models.quantized`)."""

from __future__ import annotations

import json

import torch

from llmkit.config import QuantizeConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.models.kind import require_causal
from llmkit.models.naming import output_name
from llmkit.models.quantized import (
    METHODS,
    QuantLinear,
    linears,
    out_in,
    pack_int4,
    quantize_tensor,
    quantize_tensor_zero_point,
    set_module,
)
from llmkit.optimize.made_before import made_before_model, recipe_key
from llmkit.optimize.table import check_eval_data, table_if_asked
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir


def quantize_model(lm, method: str, group: int) -> list[str]:
    """Replace the linear layers (not the output head) in place; returns their names."""
    bits = METHODS[method]
    done = []
    for name, lin in linears(lm).items():
        weight = out_in(lin).data.contiguous()
        out_features, in_features = weight.shape
        g = in_features if method == "int8-dynamic" else group
        if in_features % g:
            raise UserError(f"quantize.group_size = {group} does not divide {name}'s {in_features} inputs; "
                            "choose 32, 64 or 128 to match the model's widths")
        q = QuantLinear(in_features, out_features, bits, g, lin.bias is not None, zero_point=bits == 4,
                        dynamic=method == "int8-dynamic")
        if bits == 4:  # int4's 16 levels spread over each group's min..max (see llmkit.models.quantized)
            codes, scales, zeros = quantize_tensor_zero_point(weight, bits, g)
            q.zeros.copy_(zeros)
        else:
            codes, scales = quantize_tensor(weight, bits, g)
        q.qweight.copy_(pack_int4(codes) if bits == 4 else codes)
        q.scales.copy_(scales)
        if lin.bias is not None:
            q.bias.data.copy_(lin.bias.data)
        set_module(lm, name, q)
        done.append(name)
    return done


def quantize(model_ref: str, cfg: QuantizeConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
             progress=None) -> tuple[Model, list[dict] | None]:
    from llmkit.models.io import load_causal_lm, quiet_transformers

    cfg = QuantizeConfig.given(cfg, "llmkit.optimize.quantize.quantize")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    source = resolve_model(model_ref, registry)
    name = output_name("quantize", cfg.name, f"{source.name.split('/')[-1]}-{cfg.method}")
    if (source.lineage or {}).get("quantization"):
        raise UserError(f"{source.ref} is already quantized ({source.lineage['quantization']['method']}); quantize the original")
    require_causal(source, "quantize")
    dynamic = cfg.method == "int8-dynamic"
    if dynamic and "group_size" in cfg.model_fields_set and cfg.group_size != type(cfg).model_fields["group_size"].default:
        # int8-dynamic has one scale per row (all of a layer's inputs): groups of 32 asked for were silently per row
        raise UserError(f"quantize.group_size = {cfg.group_size}: int8-dynamic scales each row whole, not in groups; "
                        "drop --group-size, or use --method int8-weight or int4-weight for groups")
    check_eval_data(source, cfg.eval_data if cfg.table else None, registry, "quantize")
    recipe = recipe_key("quantize", source, cfg)
    if (quantized := made_before_model(registry, name, recipe, source, "quantization", console)) is not None:
        return quantized, table_if_asked(source, quantized, cfg, ws, registry, console, progress)
    lm, tokenizer = load_causal_lm(source)
    modules = quantize_model(lm, cfg.method, cfg.group_size)
    if not modules:  # a model registered as int8 that holds float weights is worse than none
        raise UserError(f"{source.ref} ({type(lm).__name__}) has no linear layers llmkit can quantize (nn.Linear or "
                        "Conv1D, the output head aside); nothing was written")
    info = {"method": cfg.method, "bits": METHODS[cfg.method], "group_size": None if dynamic else cfg.group_size,
            "zero_point": METHODS[cfg.method] == 4, "modules": modules}
    target = ws.new_folder("models", name, cfg.method)
    lineage = {**(source.lineage or {}), "format": "llmkit.model/1", "task": "causal-lm", "method": f"quantize-{cfg.method}",
               "quantization": info, "parent_model": {"id": source.id, "ref": source.ref, "path": str(source.path)},
               "config": cfg.model_dump()}
    quiet_transformers()
    from safetensors.torch import save_file

    with atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().clone() for k, v in lm.state_dict().items()}
        if getattr(lm.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: the embedding is the head
        for key, value in state.items():  # the other matrices (embeddings, untied head) as fp16; norms and scales stay fp32
            if value.dim() == 2 and value.dtype == torch.float32 and not key.endswith((".scales", ".zeros")):
                state[key] = value.half()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        lm.config.save_pretrained(str(tmp))
        if getattr(lm, "generation_config", None) is not None:
            lm.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))
    rec = registry.add("model", name, kind="causal-lm", path=target, params={"method": f"quantize-{cfg.method}"}, content_hash=recipe,
                       parents=[(source.id, "quantized_from")] if source.id else [])
    quantized = Model(target, name, rec.id, rec.version, lineage)
    if console is not None:
        console.print(f"quantized {len(modules)} linear layers to {cfg.method}"
                      + (" (one scale per row)" if dynamic else f" (groups of {cfg.group_size})"))
    return quantized, table_if_asked(source, quantized, cfg, ws, registry, console, progress)


__all__ = ["quantize", "quantize_model"]
