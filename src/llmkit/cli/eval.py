"""`llmkit eval`, `llmkit compare`, `llmkit bench-model`: parse, call llmkit.eval, print the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console, field_help

MODEL_ARG = Annotated[str, typer.Argument(help="Registry name (name, name:vN, id) or a model folder.")]


def register(app: typer.Typer) -> None:
    app.command(name="eval", epilog="Example: llmkit eval shakespeare-nano --data shakespeare --split test --stride 64 "
                                     "--out report.html")(eval_)
    app.command(epilog="Example: llmkit compare base-model tuned-model --data my-chats")(compare)
    app.command(name="bench-model", epilog="Example: llmkit bench-model shakespeare-nano --prompt-tokens 128 --new-tokens 64")(bench_model)


def _progress(ctx: Ctx):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=ctx.log, transient=True)


def eval_(
    model: MODEL_ARG,
    data: Annotated[str | None, typer.Option(help=field_help("eval", "data"))] = None,
    split: Annotated[str | None, typer.Option(help=field_help("eval", "split"))] = None,
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metrics (default: all that fit).")] = None,
    context: Annotated[int | None, typer.Option(help=field_help("eval", "context"))] = None,
    stride: Annotated[int | None, typer.Option(help=field_help("eval", "stride"))] = None,
    source: Annotated[str | None, typer.Option(help=field_help("eval", "source"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=field_help("eval", "batch_size"))] = None,
    max_examples: Annotated[int | None, typer.Option(help=field_help("eval", "max_examples"))] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help=field_help("eval", "max_new_tokens"))] = None,
    chat: Annotated[bool | None, typer.Option("--chat", help=field_help("eval", "chat"), show_default=False)] = None,
    harness: Annotated[str | None, typer.Option(help=field_help("eval", "harness"))] = None,
    harness_include: Annotated[str | None, typer.Option(help=field_help("eval", "harness_include"))] = None,
    harness_limit: Annotated[int | None, typer.Option(help=field_help("eval", "harness_limit"))] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the HTML report here.")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Evaluate a model: perplexity / bits per byte, classifier metrics, or generation metrics; registered with a report."""
    from llmkit.eval import evaluate
    from llmkit.eval.report import metrics_table

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("eval", data=data, split=split, metrics=[m.strip() for m in metrics.split(",") if m.strip()] if metrics else None,
                      context=context, stride=stride, source=source, batch_size=batch_size, max_examples=max_examples,
                      max_new_tokens=max_new_tokens, chat=chat, harness=harness, harness_include=harness_include,
                      harness_limit=harness_limit, out=str(out) if out else None)
    with _progress(ctx) as progress:
        report = evaluate(model, cfg, ctx.ws, ctx.registry, progress)

    def show() -> None:
        console.print(metrics_table(report))
        console.print(f"report {report.path}/report.html" + (f" and {out}" if out else "") + f"; eval {report.id}")

    ctx.emit(report.to_json(), show)


def compare(
    models: Annotated[list[str], typer.Argument(help="Two or more models (registry names or ids).")],
    data: Annotated[str | None, typer.Option(help="Dataset to compare on; models without an evaluation on it are evaluated.")] = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "test",
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Line up models' registered evaluations and speed measurements side by side."""
    from llmkit.eval import compare as run_compare
    from llmkit.eval.comparison import compare_table

    ctx = Ctx(config, workspace, db_url, json_out)
    with _progress(ctx) as progress:
        result = run_compare(models, data, split, ctx.ws, ctx.registry, progress)
    ctx.emit(result, lambda: console.print(compare_table(result)))


def bench_model(
    model: MODEL_ARG,
    backend: Annotated[str | None, typer.Option(help=field_help("bench-model", "backend"))] = None,
    prompt_tokens: Annotated[int | None, typer.Option(help=field_help("bench-model", "prompt_tokens"))] = None,
    new_tokens: Annotated[int | None, typer.Option(help=field_help("bench-model", "new_tokens"))] = None,
    runs: Annotated[int | None, typer.Option(help=field_help("bench-model", "runs"))] = None,
    warmup: Annotated[int | None, typer.Option(help=field_help("bench-model", "warmup"))] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Measure speed and memory: prefill/decode tokens/s, time to first token, latency p50/p95, peak RSS, size."""
    from llmkit.eval import bench_model as run_bench
    from llmkit.eval.report import metrics_table

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("bench-model", backend=backend, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup)
    with _progress(ctx) as progress:
        report = run_bench(model, cfg, ctx.ws, ctx.registry, progress)
    ctx.emit(report.to_json(), lambda: console.print(metrics_table(report)))
