"""`llmkit train pretrain` (SFT, classification and distillation join here)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console

app = typer.Typer(help="Train models: pretrain from scratch.", no_args_is_help=True)


@app.command(epilog="Example: llmkit train pretrain --data shakespeare --preset nano --max-steps 500")
def pretrain(
    data: Annotated[str | None, typer.Option(help="Dataset name (prepared with --task lm).")] = None,
    preset: Annotated[str | None, typer.Option(help="nano | micro | small | base")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the registry.")] = None,
    resume: Annotated[str | None, typer.Option(help="Run id or folder to continue.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per micro-batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per step.")] = None,
    context: Annotated[int | None, typer.Option(help="Tokens per sequence.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Warm-up steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Attention dropout.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16 | fp16")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the model.", show_default=False)] = None,
    fsdp: Annotated[bool | None, typer.Option("--fsdp", help="Shard with FSDP2 under torchrun (GPU).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    log: Annotated[str | None, typer.Option(help="none | tensorboard | mlflow")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Train a Llama-architecture model from scratch on an lm dataset."""
    from llmkit.train.pretrain import TrainingInterrupted
    from llmkit.train.pretrain import pretrain as run_pretrain

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("train", data=data, preset=preset, name=name, resume=resume, max_steps=max_steps, batch_size=batch_size,
                      grad_accum=grad_accum, context=context, lr=lr, warmup_steps=warmup_steps, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, dropout=dropout, precision=precision, compile=compile, fsdp=fsdp,
                      seed=seed, log=log)
    try:
        model = run_pretrain(cfg, ctx.ws, ctx.registry, console=ctx.log)
    except TrainingInterrupted as stop:
        ctx.log.print(f"[yellow]{stop}[/yellow]")
        raise typer.Exit(130) from None
    result = {"id": model.id, "name": model.name, "version": model.version, "path": str(model.path),
              "metrics": (model.lineage or {}).get("metrics")}
    ctx.emit(result, lambda: console.print(f"next: llmkit generate {model.name} --prompt 'Once upon a time'"))
