"""`llmkit prune`: zero out weights of every linear layer but the output head.

magnitude: the smallest |W| of each layer. Wanda (Sun et al. 2023): the smallest |W_ij| * ||X_j||,
compared within each output row, where ||X_j|| is the L2 norm of input feature j over calibration
tokens — weights that multiply large activations matter more. 2:4 keeps the best 2 of every 4
consecutive input weights (the pattern sparse tensor cores accelerate). The result is an ordinary
model folder with zeros in it; each layer's sparsity is measured and recorded. Optional recovery:
a few LM steps on the calibration texts with the zeros held at zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.config import PruneConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, load_causal_lm, resolve_model, save_model
from llmkit.models.kind import require_causal
from llmkit.models.naming import output_name
from llmkit.models.quantized import linears, out_in
from llmkit.optimize.made_before import made_before_model, recipe_key
from llmkit.optimize.table import check_eval_data
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def prunable_layers(lm: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The linear layers but the output head (nn.Linear and GPT-2's Conv1D: models.quantized.linears)."""
    return linears(lm)


def prune_mask(score: torch.Tensor, sparsity: float, pattern: str, per_row: bool) -> torch.Tensor:
    """True where a weight stays. score: (out, in), higher = more important."""
    if pattern == "2:4":
        if score.shape[1] % 4:
            raise UserError(f"2:4 pruning needs input sizes divisible by 4; a layer has {score.shape[1]}")
        groups = score.reshape(score.shape[0], -1, 4)                     # (out, in/4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
        return keep.reshape(score.shape)
    if per_row:
        k = int(score.shape[1] * sparsity)
        mask = torch.ones_like(score, dtype=torch.bool)
        if k:
            mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, False)
        return mask
    k = int(score.numel() * sparsity)
    mask = torch.ones(score.numel(), dtype=torch.bool)
    if k:  # exactly k zeros, even when scores tie
        mask[score.flatten().topk(k, largest=False).indices] = False
    mask = mask.reshape(score.shape)
    return mask


CALIBRATION_KINDS = ("lm", "chat")


def calibration_dataset(registry: Registry, ref: str, trained_on: str | None = None):
    """The dataset --calib-data names, when it is one calibration reads: a classify dataset's texts were taken as
    calibration text (smsspam for a Shakespeare model) without a word."""
    from llmkit.data.dataset import open_dataset

    where = f"prune.calib_data = '{ref}' (--calib-data)"
    try:
        ds = open_dataset(registry, ref)
    except UserError as err:
        raise UserError(f"{where}: {err}", param="prune.calib_data") from None
    if ds.kind not in CALIBRATION_KINDS:
        hint = f", such as the data the model was trained on: --calib-data {trained_on.split(':')[0]}" if trained_on else ""
        raise UserError(f"{where}: dataset {ds.ref} is a '{ds.kind}' dataset; calibration needs a prepared lm or chat "
                        f"dataset (llmkit data prepare --task lm|chat){hint}", param="prune.calib_data")
    return ds


def calibration_windows(tokenizer, registry: Registry, ref: str, context: int, samples: int, seed: int = 0) -> torch.Tensor:
    from llmkit.eval.lm import token_stream

    ds = calibration_dataset(registry, ref)
    records = ds.records("train")
    if not records:
        raise UserError(f"calibration dataset {ds.ref} has no train records")
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) if "messages" in r else r["text"] for r in records]
    ids = token_stream(tokenizer, texts[: max(samples * 4, 256)])
    rows = len(ids) // (context + 1)
    if rows == 0:
        raise UserError(f"prune.calib_context = {context}: calibration dataset {ds.ref} has {len(ids)} tokens in the train "
                        f"records read, fewer than one window of {context + 1}; lower --calib-context",
                        param="prune.calib_context")
    order = np.random.default_rng(seed).permutation(rows)[:samples]
    return torch.from_numpy(np.stack([ids[i * (context + 1): (i + 1) * (context + 1)] for i in sorted(order)]))


@torch.no_grad()
def input_norms(lm, layers: dict[str, torch.nn.Linear], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each layer over every calibration token."""
    sums = {name: torch.zeros(out_in(m).shape[1], dtype=torch.float64) for name, m in layers.items()}
    def hook(name: str):
        def accumulate(_module, args) -> None:  # returns None: the layer's input stays as it was
            x = args[0].detach().double()
            sums[name].add_(x.reshape(-1, x.shape[-1]).pow(2).sum(0))
        return accumulate

    hooks = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        for row in windows:
            lm(input_ids=row[None, :-1])
    finally:
        for h in hooks:
            h.remove()
    return {name: s.sqrt().float() for name, s in sums.items()}


def prune(model_ref: str, cfg: PruneConfig, ws: Workspace | None = None, registry: Registry | None = None,
          console=None, progress=None) -> tuple[Model, list[dict] | None]:
    cfg = PruneConfig.given(cfg, "llmkit.optimize.prune.prune")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    source = resolve_model(model_ref, registry)
    require_causal(source, "prune")
    check_eval_data(source, cfg.eval_data if cfg.table else None, registry, "prune")
    if (source.lineage or {}).get("quantization"):  # no linear layers left to prune: it divided by zero
        origin = ((source.lineage or {}).get("parent_model") or {}).get("ref") or "the model it was made from"
        raise UserError(f"{source.ref} is quantized ({source.lineage['quantization']['method']}); prune the model it came "
                        f"from ({origin}), then quantize the pruned one")
    pattern = "2of4" if cfg.pattern == "2:4" else int(cfg.sparsity * 100)
    model_name = output_name("prune", cfg.name, f"{source.name.split('/')[-1]}-{cfg.method}-{pattern}")
    trained_on = ((source.lineage or {}).get("dataset") or {}).get("ref")
    if (cfg.method == "wanda" or cfg.recover_steps) and not cfg.calib_data:
        hint = f" (the data it was trained on: --calib-data {trained_on.split(':')[0]})" if trained_on else ""
        what = "Wanda scores weights by calibration activations" if cfg.method == "wanda" else "recovery steps train on calibration texts"
        raise UserError(f"prune.calib_data is not set: {what}; pass --calib-data NAME, a prepared lm or chat dataset{hint}")
    if cfg.pattern == "2:4" and cfg.sparsity != 0.5:
        raise UserError(f"prune.sparsity = {cfg.sparsity}: the 2:4 pattern is always 0.5; drop --sparsity or use --pattern unstructured")
    calibration = calibration_dataset(registry, cfg.calib_data, trained_on) if cfg.calib_data else None
    # the dataset's version as resolved now: `--calib-data chats` after a new version of chats is another recipe
    recipe = recipe_key("prune", source, cfg, calib_data=calibration.id if calibration is not None else None)
    if (pruned := made_before_model(registry, model_name, recipe, source, "pruning", console)) is not None:
        from llmkit.optimize.table import table_if_asked

        return pruned, table_if_asked(source, pruned, cfg, ws, registry, console, progress)
    lm, tokenizer = load_causal_lm(source)
    layers = prunable_layers(lm)
    if not layers:
        raise UserError(f"{source.ref} ({type(lm).__name__}) has no linear layers llmkit can prune (nn.Linear or Conv1D, "
                        "the output head aside); nothing was written")
    limit = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
    if cfg.calib_context and limit and cfg.calib_context > limit:  # windows past the positions the model has
        raise UserError(f"prune.calib_context = {cfg.calib_context} exceeds {source.ref}'s context of {limit}; give "
                        f"--calib-context {limit} or less (0 = the model's context)", param="prune.calib_context")
    context = cfg.calib_context or limit or 256
    windows = calibration_windows(tokenizer, registry, cfg.calib_data, context, cfg.calib_samples) if cfg.calib_data else None
    norms = input_norms(lm, layers, windows) if cfg.method == "wanda" else {}
    masks = {}
    with torch.no_grad():
        for name, layer in layers.items():
            w = out_in(layer)  # (out, in): rows are outputs, whatever the layer stores
            score = w.abs().float() * norms[name][None, :] if cfg.method == "wanda" else w.abs().float()
            mask = prune_mask(score, cfg.sparsity, cfg.pattern, per_row=cfg.method == "wanda")
            masks[name] = mask if w is layer.weight else mask.t()  # in the parameter's own layout
            layer.weight.mul_(masks[name].to(w.dtype))
    if cfg.recover_steps:
        _recover(lm, layers, masks, windows, cfg)
    per_layer = {name: round(float((layer.weight == 0).float().mean()), 4) for name, layer in layers.items()}
    total = sum(int((layer.weight == 0).sum()) for layer in layers.values()) / sum(layer.weight.numel() for layer in layers.values())
    lineage = {**(source.lineage or {}), "format": "llmkit.model/1", "task": "causal-lm", "method": f"prune-{cfg.method}",
               "parent_model": {"id": source.id, "ref": source.ref, "path": str(source.path)},
               "pruning": {"method": cfg.method, "pattern": cfg.pattern, "sparsity": round(total, 4), "per_layer": per_layer},
               "config": cfg.model_dump()}
    target = ws.new_folder("models", model_name, cfg.method)
    save_model(lm, tokenizer, target, lineage)
    rec = registry.add("model", model_name, kind="causal-lm", path=target, params={"method": f"prune-{cfg.method}", "pattern": cfg.pattern},
                       content_hash=recipe,
                       metrics={"sparsity": round(total, 4)}, parents=[(source.id, "pruned_from")] if source.id else [])
    pruned = Model(target, model_name, rec.id, rec.version, lineage)
    if console is not None:
        console.print(f"pruned {len(layers)} linear layers with {cfg.method} ({cfg.pattern}): {total:.1%} zeros "
                      f"(per layer {min(per_layer.values()):.1%}-{max(per_layer.values()):.1%})")
    from llmkit.optimize.table import table_if_asked

    return pruned, table_if_asked(source, pruned, cfg, ws, registry, console, progress)


def _recover(lm, layers, masks, windows: torch.Tensor, cfg: PruneConfig) -> None:
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.recover_lr, weight_decay=0.0)
    lm.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(cfg.recover_steps):
        batch = windows[torch.randint(0, len(windows), (min(8, len(windows)),), generator=g)]
        logits = lm(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, layer in layers.items():  # the pruned weights stay zero
                layer.weight.mul_(masks[name].to(layer.weight.dtype))
    lm.eval()


def layer_sparsity(model_dir: Path) -> dict[str, float]:
    """Fraction of zeros of each 2-D weight in a saved model, read back from its safetensors."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        for name, t in load_file(str(file)).items():
            if t.dim() == 2:
                out[name] = float((t == 0).float().mean())
    return out


__all__ = ["prune", "prune_mask", "layer_sparsity"]
