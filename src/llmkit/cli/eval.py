"""`llmkit eval`, `llmkit compare`, `llmkit bench-model`: parse, call llmkit.eval, print the report."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured

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


@configured("eval")
def eval_(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Evaluate a model: perplexity / bits per byte, classifier metrics, or generation metrics; registered with a report."""
    from llmkit.eval import evaluate
    from llmkit.eval.report import metrics_table

    with _progress(ctx) as progress:
        report = evaluate(model, cfg, ctx.ws, ctx.registry, progress)

    def show() -> None:
        console.print(metrics_table(report))
        console.print(f"report {report.path}/report.html" + (f" and {cfg.out}" if cfg.out else "") + f"; eval {report.id}")

    ctx.emit(report.to_json(), show)


@configured(None)
def compare(
    ctx: Ctx,
    models: Annotated[list[str], typer.Argument(help="Two or more models (registry names or ids).")],
    data: Annotated[str | None, typer.Option(help="Dataset to compare on; models without an evaluation on it are evaluated.")] = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "test",
) -> None:
    """Line up models' registered evaluations and speed measurements side by side."""
    from llmkit.eval import compare as run_compare
    from llmkit.eval.comparison import compare_table

    with _progress(ctx) as progress:
        result = run_compare(models, data, split, ctx.ws, ctx.registry, progress)
    ctx.emit(result, lambda: console.print(compare_table(result)))


@configured("bench-model")
def bench_model(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Measure speed and memory: prefill/decode tokens/s, time to first token, latency p50/p95, peak RSS, size."""
    from llmkit.eval import bench_model as run_bench
    from llmkit.eval.report import metrics_table

    with _progress(ctx) as progress:
        report = run_bench(model, cfg, ctx.ws, ctx.registry, progress)
    ctx.emit(report.to_json(), lambda: console.print(metrics_table(report)))
