"""`llmkit train pretrain | sft | classify | distill | dpo | orpo | kto | grpo`: parse flags, call the stage, print the result."""

from __future__ import annotations

import json
import shlex
from typing import Annotated

import typer

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured
from llmkit.errors import UserError

app = typer.Typer(help="Train models: pretrain from scratch, SFT / LoRA, classification, distillation, preference (DPO, ORPO, KTO) and reward (GRPO) tuning.", no_args_is_help=True,
                  epilog="Example: llmkit train pretrain --data shakespeare --preset nano --max-steps 500")


# Flags come from the config sections (llmkit.config): every key of a trainer's section is an option.
_LORA_FLAGS = {"lora.target_modules": ("--target-modules",)}


@app.command(epilog="Example: llmkit train pretrain --data shakespeare --preset nano --max-steps 500")
@configured("pretrain")
def pretrain(ctx: Ctx, cfg) -> None:
    """Train a Llama-architecture model from scratch on an lm dataset."""
    from llmkit.train.pretraining import pretrain as run_pretrain

    _finish(ctx, lambda: run_pretrain(cfg, ctx.ws, ctx.registry, console=ctx.log),
            lambda model: f"next: llmkit generate {model.name} --prompt {shlex.quote(_opening(ctx, model))}")


def _opening(ctx: Ctx, model) -> str:
    """The first words of a val record of the model's data, to prompt it with (an English prompt was suggested for a
    model of Chinese poems, most of whose letters it had never seen)."""
    from llmkit.data.dataset import open_dataset

    first = ""
    try:
        dataset = open_dataset(ctx.registry, (model.lineage or {})["dataset"]["id"])
        for split in ("val", "train"):
            if dataset.records_file(split).exists():
                with open(dataset.records_file(split), encoding="utf-8") as fh:
                    first = json.loads(fh.readline() or "{}").get("text", "")
            if first.strip():
                break
    except (KeyError, OSError, UserError, ValueError, AttributeError):
        first = ""
    words = first.strip().split()
    if len(words) > 1:
        return " ".join(words[:3])
    return first.strip()[:4] or "Once upon a time"  # text without spaces (Chinese): its first characters


def _finish(ctx: Ctx, run, next_hint) -> None:
    from llmkit.train.checkpoint import TrainingInterrupted

    try:
        model = run()
    except TrainingInterrupted as stop:
        ctx.log.print(f"[yellow]{stop}[/yellow]")
        raise typer.Exit(130) from None
    result = {"id": model.id, "name": model.name, "version": model.version, "path": str(model.path),
              "metrics": (model.lineage or {}).get("metrics")}
    hint = next_hint(model) if callable(next_hint) else next_hint.format(name=model.name)
    ctx.emit(result, lambda: console.print(hint, markup=False, highlight=False))


@app.command(epilog="Example: llmkit train sft --base my-model --data my-chats --method lora --lora-r 8 --epochs 2")
@configured("sft", flags=_LORA_FLAGS)
def sft(ctx: Ctx, cfg, *, estimate: Annotated[bool, typer.Option(
        "--estimate", help="Print parameters, trainable parameters, expected peak memory and seconds per epoch from a "
                           "two-step probe, then exit without training or registering anything.")] = False) -> None:
    """Supervised fine-tuning of a causal LM on a chat dataset; the loss covers assistant tokens only."""
    if estimate:
        from llmkit.train.estimate import estimate_sft

        ctx.emit(estimate_sft(cfg, ctx.ws, ctx.registry, console=ctx.log), lambda: None)
        return
    from llmkit.train.supervised import sft as run_sft

    _finish(ctx, lambda: run_sft(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit chat {name}")


@app.command(epilog="Example: llmkit train classify --base minilm-l6 --data smsspam --epochs 2")
@configured("classify", flags=_LORA_FLAGS)
def classify(ctx: Ctx, cfg) -> None:
    """Fine-tune an encoder or decoder into a text classifier; best epoch kept, test split scored."""
    from llmkit.train.classification import classify as run_classify

    _finish(ctx, lambda: run_classify(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit predict {name} 'some text'")


@app.command(epilog="Example: llmkit train distill --teacher spam-clf --data smsspam --student-preset nano --epochs 3")
@configured("distill")
def distill(ctx: Ctx, cfg) -> None:
    """Distil a teacher (classifier or causal LM) into a smaller student."""
    from llmkit.train.distillation import distill as run_distill

    _finish(ctx, lambda: run_distill(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit show {name}")


def _preference(ctx: Ctx, cfg, loss: str) -> None:
    from llmkit.train.preference import preference_tune

    def hint(model) -> str:  # a resumed run's base and data are in its config, not on the command line
        config = (model.lineage or {}).get("config") or {}
        base, data = cfg.base or config.get("base") or "BASE", cfg.data or config.get("data") or "DATA"
        return f"next: llmkit compare {base} {model.name} --data {data}"

    _finish(ctx, lambda: preference_tune(cfg, loss, ctx.ws, ctx.registry, console=ctx.log), hint)


@app.command(epilog="Example: llmkit train dpo --base smollm2-135m --data my-prefs --method lora --beta 0.1")
@configured("dpo", flags=_LORA_FLAGS)
def dpo(ctx: Ctx, cfg) -> None:
    """Direct preference optimisation: prefer each pair's chosen answer over its rejected one, measured against the
    base (the reference); a preference dataset from 'data prepare --task preference' or 'data from-feedback'."""
    _preference(ctx, cfg, "dpo")


@app.command(epilog="Example: llmkit train orpo --base smollm2-135m --data my-prefs --beta 0.1")
@configured("orpo", flags=_LORA_FLAGS)
def orpo(ctx: Ctx, cfg) -> None:
    """ORPO: learn the chosen answers (as SFT does) while raising their odds over the rejected ones; no reference."""
    _preference(ctx, cfg, "orpo")


@app.command(epilog="Example: llmkit train kto --base smollm2-135m --data my-ratings --beta 0.1")
@configured("kto", flags=_LORA_FLAGS)
def kto(ctx: Ctx, cfg) -> None:
    """KTO: learn from answers rated desirable or undesirable one by one (thumbs up / down), no pairs needed."""
    _preference(ctx, cfg, "kto")


@app.command(epilog="Example: llmkit train grpo --base smollm2-135m --data arithmetic --reward number --group-size 8")
@configured("grpo", flags=_LORA_FLAGS)
def grpo(ctx: Ctx, cfg) -> None:
    """GRPO: sample groups of answers to each prompt, score them with a reward computed by code (number, json,
    regex, length or your module:function) and move the model toward the better ones in each group."""
    from llmkit.train.grpo import grpo as run_grpo

    _finish(ctx, lambda: run_grpo(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit chat {name}")
