"""`llmkit quantize`: int8 / int4 weights with group-wise scales, saved as safetensors.

Format (documented in the README): the model folder keeps config.json and the tokenizer;
model.safetensors holds every tensor that is not quantized as usual, and for each quantized linear
layer `<name>.qweight` (int8 codes; int4 codes packed two per byte, low nibble first), `<name>.scales`
(fp32, one per group of `group_size` input weights per output row) and `<name>.bias` if any;
the embeddings (and an untied output head) are stored as fp16 and loaded back as fp32; llmkit.json's
`quantization` names the method, bits, group size and the quantized layers. Symmetric:
w ≈ code * scale, scale = max|w in group| / (2^(bits-1) - 1).

Methods: int8-weight and int4-weight dequantize on the fly in each forward (weight-only: the
memory and the disk shrink, the matmul stays float); int8-dynamic loads the int8 weights into
PyTorch's dynamically quantized Linear (int8 activations and int8 matmuls, per-row weight scales).
torchao's and optimum-quanto's CPU paths were not used: their int4 kernels target CUDA, and this
format loads with plain PyTorch anywhere.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F

from llmkit.errors import UserError
from llmkit.models.io import Model, check_safetensors, resolve_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir

METHODS = {"int8-dynamic": 8, "int8-weight": 8, "int4-weight": 4}


def quantize_tensor(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (out, in), scales fp32 (out, in // group))."""
    out_f, in_f = w.shape
    qmax = 2 ** (bits - 1) - 1
    groups = w.float().reshape(out_f, in_f // group, group)
    scales = groups.abs().amax(-1).clamp(min=1e-12) / qmax                       # (out, G)
    codes = torch.round(groups / scales[..., None]).clamp(-qmax - 1, qmax).to(torch.int8)
    return codes.reshape(out_f, in_f), scales


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    low, high = codes[:, 0::2] & 0x0F, codes[:, 1::2] & 0x0F
    return (low | (high << 4)).to(torch.uint8)                                 # (out, in / 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8)
    high = ((packed >> 4) & 0x0F).to(torch.int8)
    codes = torch.stack([low, high], -1).reshape(packed.shape[0], -1)           # (out, in)
    return torch.where(codes > 7, codes - 16, codes)


class QuantLinear(torch.nn.Module):
    """A Linear whose weight is stored as int8/int4 codes and fp32 group scales."""

    def __init__(self, in_features: int, out_features: int, bits: int, group: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        width = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // group))
        self.bias = torch.nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def weight_float(self) -> torch.Tensor:
        codes = unpack_int4(self.qweight) if self.bits == 4 else self.qweight
        g = codes.reshape(self.out_features, -1, self.group).float() * self.scales[..., None]
        return g.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_float().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _linears(lm) -> dict[str, torch.nn.Linear]:
    head = lm.get_output_embeddings()
    return {n: m for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


def _set(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quantize_model(lm, method: str, group: int) -> list[str]:
    """Replace the linear layers (not the output head) in place; returns their names."""
    bits = METHODS[method]
    done = []
    for name, lin in _linears(lm).items():
        g = lin.in_features if method == "int8-dynamic" else group
        if lin.in_features % g:
            raise UserError(f"quantize.group_size = {group} does not divide {name}'s {lin.in_features} inputs; "
                            "choose 32, 64 or 128 to match the model's widths")
        q = QuantLinear(lin.in_features, lin.out_features, bits, g, lin.bias is not None)
        codes, scales = quantize_tensor(lin.weight.data, bits, g)
        q.qweight.copy_(pack_int4(codes) if bits == 4 else codes)
        q.scales.copy_(scales)
        if lin.bias is not None:
            q.bias.data.copy_(lin.bias.data)
        _set(lm, name, q)
        done.append(name)
    return done


def load_quantized(model: Model, info: dict[str, Any]):
    """Build the architecture from config.json, put QuantLinear layers in, load the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    check_safetensors(model)
    config = AutoConfig.from_pretrained(str(model.path), trust_remote_code=False)
    lm = AutoModelForCausalLM.from_config(config)  # buffers such as RoPE's inv_freq are computed, not stored
    for name in info["modules"]:
        lin = lm.get_submodule(name)
        group = lin.in_features if info["method"] == "int8-dynamic" else info["group_size"]
        _set(lm, name, QuantLinear(lin.in_features, lin.out_features, info["bits"], group, lin.bias is not None))
    state = load_file(str(model.path / "model.safetensors"))
    lm.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        lm.tie_weights()
    expected = set(lm.state_dict()) - ({"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set())
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"{model.path}: quantized weights are missing {missing[:3]}; the folder is damaged")
    if info["method"] == "int8-dynamic":
        lm = _to_dynamic(lm, info["modules"])
    lm.eval()
    return lm


def _to_dynamic(lm, names: list[str]):
    from torch.ao.quantization import quantize_dynamic

    for name in names:
        q = lm.get_submodule(name)
        lin = torch.nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight.data = q.weight_float()
        if q.bias is not None:
            lin.bias.data = q.bias.data.clone()
        _set(lm, name, lin)
    return quantize_dynamic(lm, qconfig_spec=set(names), dtype=torch.qint8, inplace=True)


def quantize(model_ref: str, cfg, ws: Workspace | None = None, registry: Registry | None = None, console=None,
             progress=None) -> tuple[Model, list[dict] | None]:
    from llmkit.models.io import load_causal_lm, quiet_transformers

    ws = ws or Workspace.open()
    registry = registry or Registry.for_workspace(ws.root)
    source = resolve_model(model_ref, registry)
    if (source.lineage or {}).get("quantization"):
        raise UserError(f"{source.ref} is already quantized ({source.lineage['quantization']['method']}); quantize the original")
    lm, tokenizer = load_causal_lm(source)
    modules = quantize_model(lm, cfg.method, cfg.group_size)
    info = {"method": cfg.method, "bits": METHODS[cfg.method], "group_size": cfg.group_size, "modules": modules}
    name = cfg.name or f"{source.name.split('/')[-1]}-{cfg.method}"
    target = ws.folder("models", f"{name}-{source.id or 'local'}-{cfg.method}")
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
            if value.dim() == 2 and value.dtype == torch.float32 and not key.endswith(".scales"):
                state[key] = value.half()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        lm.config.save_pretrained(str(tmp))
        if getattr(lm, "generation_config", None) is not None:
            lm.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))
    rec = registry.add("model", name, kind="causal-lm", path=target, params={"method": f"quantize-{cfg.method}"},
                       parents=[(source.id, "quantized_from")] if source.id else [])
    quantized = Model(target, name, rec.id, rec.version, lineage)
    if console is not None:
        console.print(f"quantized {len(modules)} linear layers to {cfg.method}"
                      + ("" if cfg.method == "int8-dynamic" else f" (groups of {cfg.group_size})"))
    rows = None
    if cfg.table:
        from llmkit.optimize.table import before_after

        rows = before_after(source, quantized, ws, registry, cfg.eval_max_examples, console, progress)
    return quantized, rows


__all__ = ["quantize", "load_quantized", "quantize_tensor", "pack_int4", "unpack_int4"]
