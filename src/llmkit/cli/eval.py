"""`llmkit eval`, `llmkit compare`, `llmkit bench-model`: parse, call llmkit.eval, print the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console

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
    data: Annotated[str | None, typer.Option(help="Dataset name, or a .jsonl file of {prompt, reference}.")] = None,
    split: Annotated[str | None, typer.Option(help="train | val | test")] = None,
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metrics (default: all that fit).")] = None,
    context: Annotated[int | None, typer.Option(help="Tokens per perplexity window (default: the model's).")] = None,
    stride: Annotated[int | None, typer.Option(help="Tokens between windows (default: context).")] = None,
    source: Annotated[str | None, typer.Option(help="text | shards")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows or texts per forward pass.")] = None,
    max_examples: Annotated[int | None, typer.Option(help="Cap on records (0 = all).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation metrics: tokens per prompt.")] = None,
    chat: Annotated[bool | None, typer.Option("--chat", help="Render .jsonl prompts with the chat template.", show_default=False)] = None,
    harness: Annotated[str | None, typer.Option(help="lm-eval task names, comma-separated (needs lm-eval).")] = None,
    harness_include: Annotated[str | None, typer.Option(help="Folder of local lm-eval task YAML files.")] = None,
    harness_limit: Annotated[int | None, typer.Option(help="lm-eval examples per task.")] = None,
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
    from llmkit.eval.compare import compare_table

    ctx = Ctx(config, workspace, db_url, json_out)
    with _progress(ctx) as progress:
        result = run_compare(models, data, split, ctx.ws, ctx.registry, progress)
    ctx.emit(result, lambda: console.print(compare_table(result)))


def bench_model(
    model: MODEL_ARG,
    backend: Annotated[str | None, typer.Option(help="What runs the model (torch).")] = None,
    prompt_tokens: Annotated[int | None, typer.Option(help="Prompt length.")] = None,
    new_tokens: Annotated[int | None, typer.Option(help="Tokens generated per run.")] = None,
    runs: Annotated[int | None, typer.Option(help="Timed runs.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed runs first.")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Measure speed and memory: prefill/decode tokens/s, time to first token, latency p50/p95, peak RSS, size."""
    from llmkit.eval import bench_model as run_bench
    from llmkit.eval.report import metrics_table

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("bench", backend=backend, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup)
    with _progress(ctx) as progress:
        report = run_bench(model, cfg, ctx.ws, ctx.registry, progress)
    ctx.emit(report.to_json(), lambda: console.print(metrics_table(report)))
