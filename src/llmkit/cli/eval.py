"""`llmkit eval`, `llmkit compare`, `llmkit bench-model`: parse, call llmkit.eval, print the report."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from llmkit.cli.common import Ctx, check_writable_file, console
from llmkit.cli.options import configured

MODEL_ARG = Annotated[str, typer.Argument(help="Registered name (name, name:vN, id or alias), a built-in (smollm2-135m, "
                                               "minilm-l6), a model folder or a Hugging Face Hub id.")]


def register(app: typer.Typer) -> None:
    app.command(name="eval", epilog="Example: llmkit eval shakespeare-nano --data shakespeare --split test --stride 64 "
                                     "--out report.html")(eval_)
    app.command(epilog="Example: llmkit compare base-model tuned-model --data my-chats")(compare)
    app.command(name="bench-model", epilog="Example: llmkit bench-model shakespeare-nano --prompt-tokens 32 --new-tokens 32")(bench_model)


def _progress(ctx: Ctx):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=ctx.log, transient=True, disable=not ctx.log.is_terminal)


@configured("eval")
def eval_(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Evaluate a model: perplexity / bits per byte, classifier metrics, or generation metrics; registered with a report."""
    from llmkit.eval import evaluate
    from llmkit.eval.report import metrics_table

    if cfg.out:
        check_writable_file(cfg.out, "--out", "report.html")
    with _progress(ctx) as progress:
        report = evaluate(model, cfg, ctx.ws, ctx.registry, progress)

    def show() -> None:
        console.print(metrics_table(report))
        console.print(f"report {report.path}/report.html" + (f" and {cfg.out}" if cfg.out else "") + f"; eval {report.id}")

    ctx.emit(report.to_json(), show)


@configured("compare")
def compare(
    ctx: Ctx, cfg,
    models: Annotated[list[str], typer.Argument(help="BASE TUNED (the gate, with --data), or any models side by side.")],
) -> None:
    """Compare models. BASE TUNED --data NAME is the promotion gate: both scored item by item on the held-out
    split and on llmkit's general-ability check, the items whose outcome flipped, and a verdict against the
    `compare` thresholds (llmkit config show compare); exit 0 when it passes, 1 when it fails. Otherwise
    (or with --no-gate) the models' registered evaluations side by side."""
    if len(models) == 2 and cfg.data and cfg.gate:
        from llmkit.eval.gate import gate

        with _progress(ctx) as progress:
            result = gate(models[0], models[1], cfg, ctx.ws, ctx.registry, progress)
        ctx.emit(result, lambda: _print_gate(result))
        if not result["passed"]:
            raise typer.Exit(1)
        return
    from llmkit.eval import compare as run_compare
    from llmkit.eval.comparison import compare_table

    with _progress(ctx) as progress:
        result = run_compare(models, cfg.data, cfg.split or "test", ctx.ws, ctx.registry, progress)
    ctx.emit(result, lambda: console.print(compare_table(result)))


def _print_gate(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['tuned']} against {result['base']} on {result['dataset']} ({result['split']}, "
                        f"{result['items']} items)")
    for column in ("", result["base"], result["tuned"], "change"):
        table.add_column(column, justify="right" if column else "left")
    task = result["task"]
    table.add_row(f"task {task['metric']}", f"{task['base']:.4f}", f"{task['tuned']:.4f}", f"{task['improvement']:+.4f}")
    general = result["general"]
    if general:
        base, tuned = general["base"], general["tuned"]
        table.add_row("general perplexity", f"{base['perplexity']:.3f}", f"{tuned['perplexity']:.3f}",
                      f"{general['perplexity_increase']:+.1%}")
        table.add_row("general answered", f"{base['answered']:.1%}", f"{tuned['answered']:.1%}",
                      f"{tuned['answered'] - base['answered']:+.1%}")
    console.print(table)
    flipped = result["flipped"]
    console.print(f"flipped: {flipped['regressed']} better -> worse, {flipped['improved']} worse -> better")
    for label, key in (("better -> worse", "regressed_examples"), ("worse -> better", "improved_examples")):
        for example in flipped[key]:
            fields = "  ".join(f"{k}: {v!r}" for k, v in example.items() if k != "item")
            console.print(f"  {label} {example['item']}  {fields}", markup=False, highlight=False)
    for label, key in (("lost", "regressed"), ("gained", "improved")) if general else ():
        for item in general[key]:
            console.print(f"  general, {label}: {item['instruction']!r} -> {item['prediction']!r} (was {item['base']!r})",
                          markup=False, highlight=False)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if result["passed"]:
        console.print(f"[bold green]verdict: pass[/bold green] (compare {result['id']})")
    else:
        console.print(f"[bold red]verdict: fail[/bold red] (compare {result['id']})")
        for reason in result["reasons"]:
            console.print(f"  {reason}", markup=False, highlight=False)


@configured("bench-model")
def bench_model(ctx: Ctx, cfg, model: MODEL_ARG) -> None:
    """Measure speed and memory: prefill/decode tokens/s, time to first token, latency p50/p95, peak RSS, size."""
    from llmkit.eval import bench_model as run_bench
    from llmkit.eval.report import metrics_table
    from llmkit.eval.speed import busy_warning

    with _progress(ctx) as progress:
        report = run_bench(model, cfg, ctx.ws, ctx.registry, progress)

    def show() -> None:
        console.print(metrics_table(report))
        if warning := busy_warning(report.metrics.get("others_cpu_share"), "the timing"):
            console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)

    ctx.emit(report.to_json(), show)
