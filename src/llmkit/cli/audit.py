"""`llmkit audit bias`: parse, call llmkit.audit.bias, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console

app = typer.Typer(help="Audit trained models for bias.", no_args_is_help=True)


@app.command(epilog="Example: llmkit audit bias sms-clf --data sms --terms my-terms.yaml --out bias.html")
def bias(
    model: Annotated[str, typer.Argument(help="Classifier: registry name (name, name:vN, id) or a model folder.")],
    data: Annotated[str | None, typer.Option(help="Classify dataset whose test (else val) texts mentioning a term are audited too.")] = None,
    terms: Annotated[Path | None, typer.Option(help="YAML/JSON file {group: \\[\\[term, ...], ...] or \\[term, ...]} adding or overriding groups.")] = None,
    groups: Annotated[str | None, typer.Option(help="Comma-separated groups to audit (default: all).")] = None,
    templates: Annotated[bool | None, typer.Option("--templates/--no-templates", help="Also audit the built-in template sentences.", show_default=False)] = None,
    flip_threshold: Annotated[float | None, typer.Option(help="Flag a group whose flip rate exceeds this (default 0.05).")] = None,
    delta_threshold: Annotated[float | None, typer.Option(help="Flag a group whose mean |change in probability| exceeds this (default 0.05).")] = None,
    max_examples: Annotated[int | None, typer.Option(help="Cap on dataset records (0 = all).")] = None,
    worst: Annotated[int | None, typer.Option(help="How many of the largest changes to list.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Swap gender, name, nationality and religion terms in texts and measure how a classifier's predictions move."""
    from llmkit.audit.bias import bias_audit, summary_table, worst_table

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("audit", data=data, terms=str(terms) if terms else None,
                      groups=[g.strip() for g in groups.split(",") if g.strip()] if groups else None, templates=templates,
                      flip_threshold=flip_threshold, delta_threshold=delta_threshold, max_examples=max_examples,
                      worst=worst, out=str(out) if out else None)
    with ctx.log.status("auditing"):
        report = bias_audit(model, cfg, ctx.ws, ctx.registry)

    def show() -> None:
        console.print(summary_table(report))
        if report.worst:
            console.print(worst_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        flagged = ", ".join(report.flagged) or "none"
        console.print(f"flagged groups: {flagged}" + (f"; report {out}" if out else ""))

    ctx.emit(report.to_json(), show)
