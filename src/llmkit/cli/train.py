"""`llmkit train pretrain | sft | classify | distill`: parse flags, call the stage, print the result."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console, field_help

app = typer.Typer(help="Train models: pretrain from scratch, SFT / LoRA, classification, distillation.", no_args_is_help=True,
                  epilog="Example: llmkit train pretrain --data shakespeare --preset nano --max-steps 500")


@app.command(epilog="Example: llmkit train pretrain --data shakespeare --preset nano --max-steps 500")
def pretrain(
    data: Annotated[str | None, typer.Option(help=field_help("pretrain", "data"))] = None,
    preset: Annotated[str | None, typer.Option(help=field_help("pretrain", "preset"))] = None,
    name: Annotated[str | None, typer.Option(help=field_help("pretrain", "name"))] = None,
    resume: Annotated[str | None, typer.Option(help=field_help("pretrain", "resume"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=field_help("pretrain", "max_steps"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=field_help("pretrain", "batch_size"))] = None,
    grad_accum: Annotated[int | None, typer.Option(help=field_help("pretrain", "grad_accum"))] = None,
    context: Annotated[int | None, typer.Option(help=field_help("pretrain", "context"))] = None,
    lr: Annotated[float | None, typer.Option(help=field_help("pretrain", "lr"))] = None,
    warmup_steps: Annotated[int | None, typer.Option(help=field_help("pretrain", "warmup_steps"))] = None,
    eval_every: Annotated[int | None, typer.Option(help=field_help("pretrain", "eval_every"))] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help=field_help("pretrain", "checkpoint_every"))] = None,
    dropout: Annotated[float | None, typer.Option(help=field_help("pretrain", "dropout"))] = None,
    precision: Annotated[str | None, typer.Option(help=field_help("pretrain", "precision"))] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help=field_help("pretrain", "compile"), show_default=False)] = None,
    fsdp: Annotated[bool | None, typer.Option("--fsdp", help=field_help("pretrain", "fsdp"), show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help=field_help("pretrain", "seed"))] = None,
    log: Annotated[str | None, typer.Option(help=field_help("pretrain", "log"))] = None,
    canaries: Annotated[int | None, typer.Option(help=field_help("pretrain", "canaries"))] = None,
    canary_repeats: Annotated[str | None, typer.Option(help="Comma-separated times each canary is planted, cycling (default 1,10,100).")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Train a Llama-architecture model from scratch on an lm dataset."""
    from llmkit.train.checkpoint import TrainingInterrupted
    from llmkit.train.pretraining import pretrain as run_pretrain

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("pretrain", data=data, preset=preset, name=name, resume=resume, max_steps=max_steps, batch_size=batch_size,
                      grad_accum=grad_accum, context=context, lr=lr, warmup_steps=warmup_steps, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, dropout=dropout, precision=precision, compile=compile, fsdp=fsdp,
                      seed=seed, log=log, canaries=canaries,
                      canary_repeats=[r.strip() for r in canary_repeats.split(",") if r.strip()] if canary_repeats else None)
    try:
        model = run_pretrain(cfg, ctx.ws, ctx.registry, console=ctx.log)
    except TrainingInterrupted as stop:
        ctx.log.print(f"[yellow]{stop}[/yellow]")
        raise typer.Exit(130) from None
    result = {"id": model.id, "name": model.name, "version": model.version, "path": str(model.path),
              "metrics": (model.lineage or {}).get("metrics")}
    ctx.emit(result, lambda: console.print(f"next: llmkit generate {model.name} --prompt 'Once upon a time'"))


# -- fine-tuning ------------------------------------------------------------------------------------
# Options every fine-tuning command shares; None means "not given" so the config file's value stands.
EpochsOpt = Annotated[float | None, typer.Option(help=field_help("classify", "epochs"))]
MaxStepsOpt = Annotated[int | None, typer.Option(help=field_help("classify", "max_steps"))]
BatchOpt = Annotated[int | None, typer.Option(help=field_help("classify", "batch_size"))]
GradAccumOpt = Annotated[int | None, typer.Option(help=field_help("classify", "grad_accum"))]
MaxLengthOpt = Annotated[int | None, typer.Option(help=field_help("classify", "max_length"))]
LrOpt = Annotated[float | None, typer.Option(help=field_help("classify", "lr"))]
EvalEveryOpt = Annotated[int | None, typer.Option(help=field_help("classify", "eval_every"))]
CheckpointOpt = Annotated[int | None, typer.Option(help=field_help("classify", "checkpoint_every"))]
SeedOpt = Annotated[int | None, typer.Option(help=field_help("classify", "seed"))]
ResumeOpt = Annotated[str | None, typer.Option(help=field_help("classify", "resume"))]
NameOpt = Annotated[str | None, typer.Option(help=field_help("classify", "name"))]
PrecisionOpt = Annotated[str | None, typer.Option(help=field_help("classify", "precision"))]
LoraROpt = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.")]
LoraAlphaOpt = Annotated[float | None, typer.Option("--lora-alpha", help="LoRA alpha (scale = alpha / r).")]
LoraDropoutOpt = Annotated[float | None, typer.Option("--lora-dropout", help="Dropout on the LoRA input.")]
CheckpointingOpt = Annotated[bool | None, typer.Option("--gradient-checkpointing", help=field_help("classify", "gradient_checkpointing"), show_default=False)]
EvalMaxOpt = Annotated[int | None, typer.Option(help=field_help("classify", "eval_max_examples"))]
TargetsOpt = Annotated[str | None, typer.Option("--target-modules", help="Comma-separated module names, or all-linear.")]


def _lora(ctx: Ctx, section: str, r, alpha, dropout, targets) -> dict | None:
    given = {k: v for k, v in {"r": r, "alpha": alpha, "dropout": dropout,
                               "target_modules": [t.strip() for t in targets.split(",") if t.strip()] if targets else None}.items()
             if v is not None}
    if not given:
        return None
    from llmkit.config import read_config_file

    return {**read_config_file(ctx.config).get(section, {}).get("lora", {}), **given}


def _finish(ctx: Ctx, run, next_hint: str) -> None:
    from llmkit.train.checkpoint import TrainingInterrupted

    try:
        model = run()
    except TrainingInterrupted as stop:
        ctx.log.print(f"[yellow]{stop}[/yellow]")
        raise typer.Exit(130) from None
    result = {"id": model.id, "name": model.name, "version": model.version, "path": str(model.path),
              "metrics": (model.lineage or {}).get("metrics")}
    ctx.emit(result, lambda: console.print(next_hint.format(name=model.name)))


@app.command(epilog="Example: llmkit train sft --base my-model --data my-chats --method lora --lora-r 8 --epochs 2")
def sft(
    base: Annotated[str | None, typer.Option(help=field_help("sft", "base"))] = None,
    data: Annotated[str | None, typer.Option(help=field_help("sft", "data"))] = None,
    method: Annotated[str | None, typer.Option(help=field_help("sft", "method"))] = None,
    lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None, lora_dropout: LoraDropoutOpt = None, target_modules: TargetsOpt = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help=field_help("sft", "packing"), show_default=False)] = None,
    epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None, batch_size: BatchOpt = None, grad_accum: GradAccumOpt = None,
    max_length: MaxLengthOpt = None, lr: LrOpt = None, eval_every: EvalEveryOpt = None, checkpoint_every: CheckpointOpt = None,
    skip_bad: Annotated[bool | None, typer.Option("--skip-bad", help=field_help("sft", "skip_bad"), show_default=False)] = None,
    precision: PrecisionOpt = None, seed: SeedOpt = None, name: NameOpt = None, resume: ResumeOpt = None,
    gradient_checkpointing: CheckpointingOpt = None, eval_max_examples: EvalMaxOpt = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Supervised fine-tuning of a causal LM on a chat dataset; the loss covers assistant tokens only."""
    from llmkit.train.supervised import sft as run_sft

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("sft", base=base, data=data, method=method, lora=_lora(ctx, "sft", lora_r, lora_alpha, lora_dropout, target_modules),
                      packing=packing, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                      max_length=max_length, lr=lr, eval_every=eval_every, checkpoint_every=checkpoint_every, skip_bad=skip_bad,
                      precision=precision, seed=seed, name=name, resume=resume,
                      gradient_checkpointing=gradient_checkpointing, eval_max_examples=eval_max_examples)
    _finish(ctx, lambda: run_sft(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit chat {name}")


@app.command(epilog="Example: llmkit train classify --base minilm-l6 --data smsspam --epochs 2")
def classify(
    base: Annotated[str | None, typer.Option(help=field_help("classify", "base"))] = None,
    data: Annotated[str | None, typer.Option(help=field_help("classify", "data"))] = None,
    method: Annotated[str | None, typer.Option(help=field_help("classify", "method"))] = None,
    class_weights: Annotated[str | None, typer.Option(help=field_help("classify", "class_weights"))] = None,
    lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None, lora_dropout: LoraDropoutOpt = None, target_modules: TargetsOpt = None,
    epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None, batch_size: BatchOpt = None, grad_accum: GradAccumOpt = None,
    max_length: MaxLengthOpt = None, lr: LrOpt = None, eval_every: EvalEveryOpt = None, checkpoint_every: CheckpointOpt = None,
    precision: PrecisionOpt = None, seed: SeedOpt = None, name: NameOpt = None, resume: ResumeOpt = None,
    gradient_checkpointing: CheckpointingOpt = None, eval_max_examples: EvalMaxOpt = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Fine-tune an encoder or decoder into a text classifier; best epoch kept, test split scored."""
    from llmkit.train.classification import classify as run_classify

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("classify", base=base, data=data, method=method, class_weights=class_weights,
                      lora=_lora(ctx, "classify", lora_r, lora_alpha, lora_dropout, target_modules), epochs=epochs,
                      max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, lr=lr,
                      eval_every=eval_every, checkpoint_every=checkpoint_every, precision=precision, seed=seed, name=name, resume=resume,
                      gradient_checkpointing=gradient_checkpointing, eval_max_examples=eval_max_examples)
    _finish(ctx, lambda: run_classify(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit predict {name} 'some text'")


@app.command(epilog="Example: llmkit train distill --teacher spam-clf --data smsspam --student-preset nano --epochs 3")
def distill(
    teacher: Annotated[str | None, typer.Option(help=field_help("distill", "teacher"))] = None,
    data: Annotated[str | None, typer.Option(help=field_help("distill", "data"))] = None,
    student: Annotated[str | None, typer.Option(help=field_help("distill", "student"))] = None,
    student_preset: Annotated[str | None, typer.Option(help=field_help("distill", "student_preset"))] = None,
    student_layers: Annotated[int | None, typer.Option(help=field_help("distill", "student_layers"))] = None,
    temperature: Annotated[float | None, typer.Option(help=field_help("distill", "temperature"))] = None,
    alpha: Annotated[float | None, typer.Option(help=field_help("distill", "alpha"))] = None,
    epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None, batch_size: BatchOpt = None, grad_accum: GradAccumOpt = None,
    max_length: MaxLengthOpt = None, lr: LrOpt = None, eval_every: EvalEveryOpt = None, checkpoint_every: CheckpointOpt = None,
    precision: PrecisionOpt = None, seed: SeedOpt = None, name: NameOpt = None, resume: ResumeOpt = None,
    gradient_checkpointing: CheckpointingOpt = None, eval_max_examples: EvalMaxOpt = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Distil a teacher (classifier or causal LM) into a smaller student."""
    from llmkit.train.distillation import distill as run_distill

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("distill", teacher=teacher, data=data, student=student, student_preset=student_preset,
                      student_layers=student_layers, temperature=temperature, alpha=alpha, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, lr=lr, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, precision=precision, seed=seed, name=name, resume=resume,
                      gradient_checkpointing=gradient_checkpointing, eval_max_examples=eval_max_examples)
    _finish(ctx, lambda: run_distill(cfg, ctx.ws, ctx.registry, console=ctx.log), "next: llmkit show {name}")
