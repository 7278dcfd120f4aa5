"""Many LoRA adapters on one FastLlama base, chosen per row: requests for different adapters and for the bare
base share one batch; the base matmuls run once per step and each row adds its own adapter's low-rank delta.

Each adapter is read into FastLlama's layout: per layer, q/k/v and gate/up fused as the base's weights are, the
RMSNorm weight folded into A's input side, q/k rows in RoPE pair order and the attention scale folded into q on
B's output side, alpha / r folded into B. All adapters' A are then concatenated along the rank axis (and their B
stacked), so one step adds every row's delta with three ops per projection whatever the number of adapters:

    h = x @ A_all            # (N, R) where R is the sum of the adapters' ranks (a few dozen columns each)
    h *= mask                # (N, R): 1 in the columns of the row's own adapter, 0 elsewhere (bare base: all 0)
    y += h @ B_all           # (N, out)

That is Punica's SGMV written as dense ops: at a handful of adapters of rank 8-16 the wasted columns cost less
than a gather of per-row weights or a Python loop over adapters would. Only the projections the adapters target
take part; an adapter with `modules_to_save` (a tuned embedding or head) cannot share the base and is refused.
Token ids and tensors only: which request uses which adapter is the serving engine's business (`LlamaState.adapter`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import UserError

GROUPS = ("qkv", "o", "gu", "down")  # FastLlama's fused projections
_MEMBERS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gu": ("gate_proj", "up_proj"),
            "down": ("down_proj",)}
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


@dataclass
class AdapterLayout:
    """One adapter in FastLlama's terms: per layer, per group, (A (in, r), B (r, out)) or None where untouched."""

    name: str
    layers: list[dict[str, tuple[torch.Tensor, torch.Tensor] | None]]
    dims: dict[str, tuple[int, int]]  # group -> (in, out) of the base's fused projection

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for ab in layer.values() if ab for t in ab)


def read_adapter(folder: Path, name: str, model, dtype: torch.dtype) -> AdapterLayout:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for `model`'s FastLlama layout."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("modules_to_save"):
        raise UserError(f"adapter '{name}' ({folder}) also tunes {', '.join(cfg['modules_to_save'])}; only LoRA on the "
                        "attention and MLP projections can share a base: serve it merged (llmkit merge)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(f"adapter '{name}' ({folder}) has per-layer ranks (rank_pattern); serve it merged (llmkit merge)")
    if cfg.get("use_dora"):
        raise UserError(f"adapter '{name}' ({folder}) is DoRA, whose delta is not low-rank; serve it merged (llmkit merge)")
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    # the config is the adapter's own file: r 0 divided by zero, r "many" was a ValueError
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
        raise UserError(f"adapter '{name}' ({folder}): adapter_config.json has r = {r!r}; a LoRA rank is a whole number "
                        "from 1")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise UserError(f"adapter '{name}' ({folder}): adapter_config.json has lora_alpha = {alpha!r}; it is a number")
    scale = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    return adapter_layout(load_file(str(folder / "adapter_model.safetensors")), scale, model, dtype, name,
                          f"adapter '{name}' ({folder})")


def adapter_layout(weights: dict[str, torch.Tensor], scale: float, model, dtype: torch.dtype, name: str,
                   where: str) -> AdapterLayout:
    """PEFT-named LoRA weights (lora_A / lora_B per projection; `scale` = alpha / r) in `model`'s FastLlama layout:
    what `read_adapter` reads from a folder, and what a trainer passes from its live adapters (GRPO's sampler).
    `where` names them in errors."""
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        m = _KEY.search(key)
        if m is None:
            raise UserError(f"{where} has weights this server cannot add per row ({key}); serve it "
                            "merged (llmkit merge)")
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor.to(torch.float32)
    from llmkit.runtime.llama_layout import LayoutBuilder

    layout = LayoutBuilder(model, 1)
    layers = []
    for i, layer in enumerate(model.model.layers):
        layers.append({g: _group(layout, layer, i, g, parts, scale, dtype) for g in GROUPS})
    if not any(ab for layer in layers for ab in layer.values()):
        raise UserError(f"{where} has no LoRA weights for this base's layers")
    first = model.model.layers[0]
    c, q, inter = model.config.hidden_size, layout.nh * layout.hd, first.mlp.up_proj.out_features
    dims = {"qkv": (c, (layout.nh + 2 * layout.nkv) * layout.hd), "o": (q, c), "gu": (c, 2 * inter), "down": (inter, c)}
    return AdapterLayout(name, layers, dims)


def _group(layout, layer, i: int, group: str, parts: dict, scale: float, dtype) -> tuple | None:
    """(A (in, r_total), B (r_total, out)) of one fused projection, transformed as the base's weight is."""
    members = _MEMBERS[group]
    found = [parts.get((i, p)) for p in members]
    if not any(found):
        return None
    a_blocks, b_blocks, widths = [], [], []
    for p, ab in zip(members, found, strict=True):
        out = _out_features(layer, p)
        widths.append(out)
        if ab is None:
            continue
        if set(ab) != {"A", "B"}:
            raise UserError(f"layer {i} {p}: an adapter needs both lora_A and lora_B")
        a_blocks.append(ab["A"])  # (r, in)
        b_blocks.append((p, ab["B"] * scale))  # (out_p, r)
    norm = {"qkv": layer.input_layernorm.weight, "gu": layer.post_attention_layernorm.weight}.get(group)
    a = torch.cat(a_blocks)  # (r_total, in)
    if norm is not None:  # the base's RMSNorm weight is folded into its matmul: the delta's input gets it too
        a = a * norm.detach().float()
    b = torch.zeros(sum(widths), a.shape[0])  # (out, r_total): block-diagonal over the fused members
    col, offsets = 0, dict(zip(members, [sum(widths[:k]) for k in range(len(widths))], strict=True))
    for p, bp in b_blocks:
        b[offsets[p]:offsets[p] + bp.shape[0], col:col + bp.shape[1]] = _as_layout(layout, layer, p, bp)
        col += bp.shape[1]
    return a.t().contiguous().to(dtype), b.t().contiguous().to(dtype)


def _out_features(layer, p: str) -> int:
    owner = layer.self_attn if p in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
    return getattr(owner, p).out_features


def _as_layout(layout, layer, p: str, b: torch.Tensor) -> torch.Tensor:
    """B's output rows as the base's: q and k rows in RoPE pair order, q times the attention scale unless a
    q_norm (Qwen3) carries it."""
    if p == "q_proj":
        scale = 1.0 if getattr(layer.self_attn, "q_norm", None) is not None else layout.hd ** -0.5
        return layout.pairs(b, layout.nh) * scale
    if p == "k_proj":
        return layout.pairs(b, layout.nkv)
    return b


@dataclass
class AdapterSet:
    """The adapters one base serves, concatenated per layer and group; ids stay fixed while others come and go."""

    adapters: dict[int, AdapterLayout] = field(default_factory=dict)  # id (>= 1) -> adapter
    weights: list[dict[str, tuple[torch.Tensor, torch.Tensor] | None]] = field(default_factory=list)
    columns: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # group -> id -> column range
    width: dict[str, int] = field(default_factory=dict)  # group -> R

    @classmethod
    def of(cls, adapters: dict[int, AdapterLayout]) -> AdapterSet:
        out = cls(dict(adapters))
        if not adapters:
            return out
        any_one = next(iter(adapters.values()))
        for g in GROUPS:  # an adapter's rank per group: the same in every layer it touches
            out.columns[g], col = {}, 0
            for k, ad in adapters.items():
                r = next((ab[0].shape[1] for layer in ad.layers if (ab := layer[g]) is not None), 0)
                out.columns[g][k] = (col, col + r)
                col += r
            out.width[g] = col
        for i in range(len(any_one.layers)):
            layer = {}
            for g in GROUPS:
                blocks = [(ad.layers[i][g], out.columns[g][k]) for k, ad in adapters.items()]
                if all(ab is None for ab, _ in blocks):
                    layer[g] = None
                    continue
                n_in, n_out = any_one.dims[g]
                dtype = next(ab[0].dtype for ab, _ in blocks if ab is not None)
                a = torch.zeros(n_in, out.width[g], dtype=dtype)
                b = torch.zeros(out.width[g], n_out, dtype=dtype)
                for ab, (lo, hi) in blocks:
                    if ab is not None:  # an adapter that skips this layer keeps zero columns here
                        a[:, lo:hi], b[lo:hi] = ab
                layer[g] = (a, b)
            out.weights.append(layer)
        return out

    def masks(self, rows: list[int], dtype: torch.dtype, device) -> dict[str, torch.Tensor] | None:
        """Per group, (N, R): each row's own adapter's columns (a row with id 0, or an id no longer here, gets
        none). None when no row uses an adapter: the step runs the base alone."""
        if not any(k in self.adapters for k in rows):
            return None
        out = {}
        for g in GROUPS:
            m = torch.zeros(len(rows), self.width[g], dtype=dtype, device=device)
            for n, k in enumerate(rows):
                if k in self.columns[g]:
                    lo, hi = self.columns[g][k]
                    m[n, lo:hi] = 1
            out[g] = m
        return out


def add_delta(y: torch.Tensor, x: torch.Tensor, ab: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor) -> None:
    """y += ((x @ A_all) * mask) @ B_all in place: each row's own adapter's delta (none for a bare-base row)."""
    if ab is not None:
        y.addmm_(torch.mm(x, ab[0]).mul_(mask), ab[1])
