"""`llmkit quantize`, `llmkit prune`, `llmkit export`: parse, call llmkit.optimize, print the before/after table."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console, field_help

MODEL_ARG = Annotated[str, typer.Argument(help="Registry name (name, name:vN, id) or a model folder.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit export shakespeare-nano --format gguf --quant q8_0\n\n"
                       "Then: llama.cpp's llama-cli -m <folder>/model-q8_0.gguf, or ollama create NAME -f <folder>/Modelfile")(export)
    app.command(epilog="Example: llmkit quantize shakespeare-nano --method int4-weight --group-size 64")(quantize)
    app.command(epilog="Example: llmkit prune shakespeare-nano --method wanda --sparsity 0.5 --calib-data shakespeare")(prune)


def _progress(ctx: Ctx):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=ctx.log, transient=True)


def export(
    model: MODEL_ARG,
    format: Annotated[str | None, typer.Option("--format", help=field_help("export", "format"))] = None,
    quant: Annotated[str | None, typer.Option(help=field_help("export", "quant"))] = None,
    name: Annotated[str | None, typer.Option(help=field_help("export", "name"))] = None,
    table: Annotated[bool | None, typer.Option("--table/--no-table", help=field_help("export", "table"), show_default=False)] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Export a model for other runtimes: GGUF for llama.cpp and Ollama (with a Modelfile)."""
    from llmkit.optimize.export import export as run_export

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("export", format=format, quant=quant, name=name, table=table)
    with _progress(ctx) as progress:
        exported, rows = run_export(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    ctx.emit({"id": exported.id, "name": exported.name, "version": exported.version, "path": str(exported.path), "table": rows},
             lambda: console.print(f"model [bold]{exported.ref}[/bold] at {exported.path}"))


def prune(
    model: MODEL_ARG,
    method: Annotated[str | None, typer.Option(help=field_help("prune", "method"))] = None,
    sparsity: Annotated[float | None, typer.Option(help=field_help("prune", "sparsity"))] = None,
    pattern: Annotated[str | None, typer.Option(help=field_help("prune", "pattern"))] = None,
    calib_data: Annotated[str | None, typer.Option(help=field_help("prune", "calib_data"))] = None,
    calib_samples: Annotated[int | None, typer.Option(help=field_help("prune", "calib_samples"))] = None,
    recover_steps: Annotated[int | None, typer.Option(help=field_help("prune", "recover_steps"))] = None,
    name: Annotated[str | None, typer.Option(help=field_help("prune", "name"))] = None,
    table: Annotated[bool | None, typer.Option("--table/--no-table", help=field_help("prune", "table"), show_default=False)] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Prune a model's linear layers (magnitude or Wanda; unstructured or 2:4); saved as a normal model."""
    from llmkit.optimize.prune import prune as run_prune

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("prune", method=method, sparsity=sparsity, pattern=pattern, calib_data=calib_data,
                      calib_samples=calib_samples, recover_steps=recover_steps, name=name, table=table)
    with _progress(ctx) as progress:
        pruned, rows = run_prune(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    ctx.emit({"id": pruned.id, "name": pruned.name, "version": pruned.version, "path": str(pruned.path), "table": rows,
              "sparsity": pruned.lineage["pruning"]["sparsity"]},
             lambda: console.print(f"model [bold]{pruned.ref}[/bold] at {pruned.path}"))


def quantize(
    model: MODEL_ARG,
    method: Annotated[str | None, typer.Option(help=field_help("quantize", "method"))] = None,
    group_size: Annotated[int | None, typer.Option(help=field_help("quantize", "group_size"))] = None,
    name: Annotated[str | None, typer.Option(help=field_help("quantize", "name"))] = None,
    table: Annotated[bool | None, typer.Option("--table/--no-table", help=field_help("quantize", "table"), show_default=False)] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Quantize a model's linear layers to int8 or int4 (group-wise scales); loads back through llmkit."""
    from llmkit.optimize.quantize import quantize as run_quantize

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("quantize", method=method, group_size=group_size, name=name, table=table)
    with _progress(ctx) as progress:
        quantized, rows = run_quantize(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    ctx.emit({"id": quantized.id, "name": quantized.name, "version": quantized.version, "path": str(quantized.path), "table": rows},
             lambda: console.print(f"model [bold]{quantized.ref}[/bold] at {quantized.path}"))
