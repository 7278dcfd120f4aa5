"""What every trainer of a causal LM on a pretrained base shares (SFT, DPO/ORPO/KTO, GRPO): the base opened for
training on the path that suits it, and the tuned model saved, registered and linked to its run.

The fast path (train.fast_lora: our fused Llama, frozen base in the training precision, chunked loss) serves
Llama-family bases; any other causal LM trains through transformers + peft. Which one ran is `path`, and
saving follows it: a whole model under full tuning, else a PEFT adapter beside its base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import llmkit.train.fast_lora as fast_lora
from llmkit.config import FinetuneConfig
from llmkit.data.tokenizer import CHAT_TEMPLATE
from llmkit.errors import UserError
from llmkit.models.io import Model, is_adapter, load_causal_lm, load_tokenizer_for, resolve_model, save_model
from llmkit.models.kind import require_causal
from llmkit.registry import Registry
from llmkit.train.checkpoint import run_model_folder
from llmkit.train.finetune import Fitted, enable_checkpointing
from llmkit.train.lora import apply_lora, save_adapter, save_adapter_state
from llmkit.train.optim import resolve_precision
from llmkit.workspace import Workspace


@dataclass
class TuningBase:
    """A base opened for training: the module to train, its tokenizer (with a chat template), and how it trains."""

    base: Model
    model: torch.nn.Module
    tokenizer: Any
    path: str          # "fast" (train.fast_lora) or "peft" (transformers + peft)
    pad_id: int
    device: str


def open_base(cfg, stage: str, registry: Registry, console) -> TuningBase:
    """`cfg.base` resolved and loaded for training. A base without a chat template gets llmkit's, which is saved
    with the tuned model, so chat and serve render turns as training did."""
    if not cfg.base:
        raise UserError(f"{stage}.base is not set: pass --base MODEL (a registry name, a model folder or a Hub id)")
    base = resolve_model(cfg.base, registry)
    require_causal(base, f"train {stage}")  # minilm-l6 trained and registered a random LM head
    if cfg.method == "full" and is_adapter(base.path):  # its base loads frozen: "nothing to train", after the loading
        raise UserError(f"{stage}.method = 'full': {base.ref} is a LoRA adapter; merge it first (llmkit merge "
                        f"{base.ref}) and tune the merged model, or use --method lora")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, path = load_for_training(base, cfg, device, console, stage)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TuningBase(base, model, tokenizer, path, pad_id, device)


def register_tuned(fitted: Fitted, cfg, opened: TuningBase, dataset, name: str, parents: list[tuple[str, str]],
                   ws: Workspace, registry: Registry, console, tuning: str | None = None) -> Model:
    """Save the fitted model (or adapter) into the workspace, register it with its lineage — base, dataset, run,
    metrics, config; `tuning` names the objective when it is not plain SFT — and say where it is."""
    base = opened.base
    lineage = {"format": "llmkit.model/1", "task": "causal-lm", "method": cfg.method, **({"tuning": tuning} if tuning else {}),
               "base": {"path": str(base.path), "ref": base.ref, "id": base.id},
               "parent_model": {"path": str(base.path), "ref": base.ref, "id": base.id},
               "dataset": {"id": dataset.id, "ref": dataset.ref}, "run": {"id": fitted.run_id, "path": str(fitted.run_dir)},
               "metrics": fitted.summary, "config": cfg.model_dump()}
    target = run_model_folder(ws, name, fitted.run_id, fitted.summary.get("steps", 0))
    save_trained(fitted.model, cfg, opened.path, opened.tokenizer, target, base, lineage)
    params = {"method": cfg.method, "base": base.ref, **({"tuning": tuning} if tuning else {})}
    rec = registry.add("model", name, kind="causal-lm", path=target, params=params, metrics=fitted.summary,
                       parents=[(fitted.run_id, "produced_by"), *parents])
    if console is not None:
        console.print(f"model [bold]{rec.ref}[/bold] at {target}" + ("" if cfg.method == "full" else " (LoRA adapter; llmkit merge makes it standalone)"))
    return Model(target, name, rec.id, rec.version, lineage)


def save_trained(model: torch.nn.Module, cfg, path: str, tokenizer, target, base: Model, lineage: dict[str, Any]) -> None:
    """A tuned causal LM into `target`: a whole model (full tuning) or a PEFT adapter beside its base, whichever
    path (`load_for_training`) trained it."""
    model = model.to("cpu")
    if cfg.method == "full":
        save_model(model.to_hf() if path == "fast" else model, tokenizer, target, lineage)
    elif path == "fast":
        save_adapter_state(model.adapter_state(), cfg.lora, fast_lora.peft_target_modules(model, cfg.lora.target_modules),
                           tokenizer, target, base, lineage)
    else:
        save_adapter(model, tokenizer, target, base, lineage)


def load_for_training(base: Model, cfg: FinetuneConfig, device: str, console, stage: str = "sft") -> tuple[torch.nn.Module, Any, str]:
    """The module to train, its tokenizer, and which path trains it: our fast Llama where the base allows,
    else transformers + peft (a speed difference, never an error)."""
    reason = fast_lora.fast_path_reason(base, cfg)
    if reason is None:  # (its LoRA targets are Llama projections, so they exist: nothing for check_targets to say)
        lm = fast_lora.load_fast(base, cfg, resolve_precision(cfg.precision, device), device)
        if console is not None:
            console.print("training path: fast Llama (fused projections, frozen base in the training precision, "
                          "chunked loss over labelled tokens)")
        return lm, load_tokenizer_for(base), "fast"
    lm, tokenizer = _load_base(base, cfg, device, stage)
    if cfg.gradient_checkpointing:
        enable_checkpointing(lm, f"{stage}.gradient_checkpointing")  # the section of the command run
    if cfg.method in ("lora", "qlora"):
        torch.manual_seed(cfg.seed)  # the adapters' initial weights
        lm = apply_lora(lm, cfg.lora, "CAUSAL_LM", f"{stage}.lora")
    if console is not None:
        console.print(f"training path: transformers + peft ({reason})" + ("; --compile applies to the fast path only, "
                      "not used" if cfg.compile is True else ""))
    return lm, tokenizer, "peft"


def _load_base(base: Model, cfg: FinetuneConfig, device: str, stage: str):
    if cfg.method == "qlora":
        return _load_4bit(base, device, stage)
    lm, tokenizer = load_causal_lm(base)
    return lm.to(device), tokenizer


def _load_4bit(base: Model, device: str, stage: str):
    if device != "cuda":
        raise UserError(f"{stage}.method = 'qlora' needs a CUDA GPU: its 4-bit base comes from bitsandbytes, which has no CPU "
                        "backend here. Use --method lora on this machine (same adapters, 16/32-bit base)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"{stage}.method = 'qlora' needs bitsandbytes: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from llmkit.models.io import check_safetensors, load_tokenizer_for

    check_safetensors(base)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    lm = AutoModelForCausalLM.from_pretrained(str(base.path), quantization_config=quant, use_safetensors=True,
                                              trust_remote_code=False, device_map={"": 0})
    return prepare_model_for_kbit_training(lm), load_tokenizer_for(base)
