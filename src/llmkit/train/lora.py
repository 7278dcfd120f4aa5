"""LoRA with `peft`: adapters on a frozen base, saved in PEFT format, merged into a standalone model.

An adapter folder holds `adapter_config.json` + `adapter_model.safetensors` (what PEFT and every
tool built on it read), the tokenizer, and `llmkit.json` naming the base. `merge` writes base +
adapter as one ordinary Hugging Face folder whose outputs equal the pair's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmkit.config import LoraConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, adapter_base, is_adapter, quiet_transformers, resolve_model, save_model
from llmkit.workspace import Workspace, atomic_dir

ALL_LINEAR = "all-linear"


def adaptable_modules(model: torch.nn.Module) -> list[str]:
    """Short names of the layers LoRA can adapt (linear, embedding, conv), as target_modules spells them."""
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, kinds) or type(module).__name__ == "Conv1D":  # GPT-2's transposed linear
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def check_targets(model: torch.nn.Module, targets: list[str], key: str) -> None:
    if targets == [ALL_LINEAR]:
        return
    if ALL_LINEAR in targets:
        raise UserError(f"{key} = {targets}: '{ALL_LINEAR}' stands alone; give it or a list of module names")
    found = adaptable_modules(model)
    suffixes = {full.rsplit(".", 1)[-1] for full, _ in model.named_modules()}
    missing = [t for t in targets if t not in suffixes and not any(full.endswith("." + t) for full, _ in model.named_modules())]
    if missing:
        raise UserError(f"{key}: {', '.join(missing)} matches no module of this model; modules LoRA can adapt: "
                        f"{', '.join(found)} (or {ALL_LINEAR})")


def apply_lora(model: torch.nn.Module, cfg: LoraConfig, task_type: str, key: str):
    """Wrap `model` in a PeftModel whose only trainable parameters are the adapters (and, for
    classification, the new head)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    check_targets(model, cfg.target_modules, f"{key}.target_modules")
    targets: Any = ALL_LINEAR if cfg.target_modules == [ALL_LINEAR] else cfg.target_modules
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              task_type=task_type, bias="none")
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as err:
        raise UserError(f"{key}: {str(err).splitlines()[0]}") from None


def save_adapter(peft_model, tokenizer, target: Path, base: Model, lineage: dict[str, Any]) -> Path:
    """The adapter in PEFT format plus tokenizer and llmkit.json, written atomically."""
    quiet_transformers()
    with atomic_dir(target) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        _finish_adapter(tmp, tokenizer, base, lineage)
    return target


def save_adapter_state(weights: dict[str, torch.Tensor], lora: LoraConfig, targets: list[str], tokenizer, target: Path,
                       base: Model, lineage: dict[str, Any]) -> Path:
    """Adapter weights already named as a PeftModel saves them (train.fast_lora) written as `save_adapter` writes a
    PeftModel's: the same files, keys and adapter_config.json."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import save_file

    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=set(targets),
                            task_type="CAUSAL_LM", bias="none", inference_mode=True)
    with atomic_dir(target) as tmp:
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        _finish_adapter(tmp, tokenizer, base, lineage)
    return target


def _finish_adapter(folder: Path, tokenizer, base: Model, lineage: dict[str, Any]) -> None:
    config_file = folder / "adapter_config.json"
    adapter_cfg = json.loads(config_file.read_text())
    adapter_cfg["base_model_name_or_path"] = str(base.path)  # where this machine finds the base
    config_file.write_text(json.dumps(adapter_cfg, indent=2))
    tokenizer.save_pretrained(str(folder))
    (folder / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))


def merge(ref: str, ws: Workspace | None = None, registry=None, name: str | None = None, console=None) -> Model:
    """`llmkit merge`: fold a LoRA adapter into its base and register the standalone model."""
    from llmkit.models.naming import output_name
    from llmkit.registry import Registry

    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    adapter = resolve_model(ref, registry)
    name = output_name("merge", name, f"{adapter.name}-merged")
    if not is_adapter(adapter.path):
        raise UserError(f"{adapter.ref} is not a LoRA adapter (no adapter_config.json in {adapter.path}); "
                        "only adapters trained with --method lora need merging")
    lineage = adapter.lineage or {}
    base = adapter_base(adapter)
    task = lineage.get("task", "causal-lm")
    if task == "classification":
        from llmkit.models.io import load_classifier

        merged, tokenizer, _ = load_classifier(adapter)
    else:
        from llmkit.models.io import load_causal_lm

        merged, tokenizer = load_causal_lm(adapter)
    target = ws.new_folder("models", name, "merged")
    new_lineage = {**lineage, "method": "lora-merged", "parent_model": {"id": adapter.id, "ref": adapter.ref, "path": str(adapter.path)},
                   "base": {"path": str(base.path), "ref": base.ref, "id": base.id}}
    save_model(merged, tokenizer, target, new_lineage)
    parents = [(adapter.id, "merged_from")] if adapter.id else []
    rec = registry.add("model", name, kind=task, path=target, params={"method": "lora-merged"},
                       metrics=lineage.get("metrics"), parents=parents)
    if console is not None:
        console.print(f"merged {adapter.ref} into {base.ref}: model [bold]{rec.ref}[/bold] at {target}")
    return Model(target, name, rec.id, rec.version, new_lineage)
