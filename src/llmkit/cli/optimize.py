"""`llmkit export` (and later quantize / prune): parse, call llmkit.optimize, print the before/after table."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console

MODEL_ARG = Annotated[str, typer.Argument(help="Registry name (name, name:vN, id) or a model folder.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit export shakespeare-nano --format gguf --quant q8_0\n\n"
                       "Then: llama.cpp's llama-cli -m <folder>/model-q8_0.gguf, or ollama create NAME -f <folder>/Modelfile")(export)


def export(
    model: MODEL_ARG,
    format: Annotated[str | None, typer.Option("--format", help="gguf | onnx")] = None,
    quant: Annotated[str | None, typer.Option(help="GGUF weights: f32 | f16 | q8_0 | q4_0")] = None,
    name: Annotated[str | None, typer.Option(help="Registry name of the export.")] = None,
    table: Annotated[bool | None, typer.Option("--table/--no-table", help="Before/after size, perplexity, speed.", show_default=False)] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Export a model for other runtimes: GGUF for llama.cpp and Ollama (with a Modelfile)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from llmkit.optimize.export import export as run_export

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("export", format=format, quant=quant, name=name, table=table)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=ctx.log, transient=True) as progress:
        exported, rows = run_export(model, cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)
    ctx.emit({"id": exported.id, "name": exported.name, "version": exported.version, "path": str(exported.path), "table": rows},
             lambda: console.print(f"model [bold]{exported.ref}[/bold] at {exported.path}"))
