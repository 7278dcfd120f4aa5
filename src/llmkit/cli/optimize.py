"""`llmkit quantize`, `llmkit prune`, `llmkit export`: parse, call llmkit.optimize, print the before/after table."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured

MODEL_ARG = Annotated[str, typer.Argument(help="Registered name (name, name:vN, id or alias), a built-in (smollm2-135m), "
                                               "a model folder or a Hugging Face Hub id.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit export shakespeare-nano --format gguf --quant q8_0\n\n"
                       "Then: llama.cpp's llama-cli -m <folder>/model-q8_0.gguf, or ollama create NAME -f <folder>/Modelfile")(export)
    app.command(epilog="Example: llmkit quantize shakespeare-nano --method int4-weight --group-size 64")(quantize)
    app.command(epilog="Example: llmkit prune shakespeare-nano --method wanda --sparsity 0.5 --calib-data shakespeare")(prune)


def _progress(ctx: Ctx):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=ctx.log, transient=True,
                    disable=not ctx.log.is_terminal)


def _emit(ctx: Ctx, model, rows, **extra) -> None:
    ctx.emit({"id": model.id, "name": model.name, "version": model.version, "path": str(model.path), "table": rows, **extra},
             lambda: console.print(f"model [bold]{model.ref}[/bold] at {model.path}"))


@configured("export")
def export(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Export a model for other runtimes: GGUF for llama.cpp and Ollama (with a Modelfile), or ONNX for onnxruntime."""
    from llmkit.optimize.export import export as run_export

    with _progress(ctx) as progress:
        exported, rows = run_export(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    _emit(ctx, exported, rows)


@configured("prune")
def prune(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Prune a model's linear layers (magnitude or Wanda; unstructured or 2:4); saved as a normal model."""
    from llmkit.optimize.prune import prune as run_prune

    with _progress(ctx) as progress:
        pruned, rows = run_prune(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    _emit(ctx, pruned, rows, sparsity=pruned.lineage["pruning"]["sparsity"])


@configured("quantize")
def quantize(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Quantize a model's linear layers to int8 or int4 (group-wise scales); loads back through llmkit."""
    from llmkit.optimize.quantize import quantize as run_quantize

    with _progress(ctx) as progress:
        quantized, rows = run_quantize(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    _emit(ctx, quantized, rows)
