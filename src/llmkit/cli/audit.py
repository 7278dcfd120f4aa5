"""`llmkit audit bias`: parse, call llmkit.audit.bias, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, console, field_help

app = typer.Typer(help="Audit trained models for bias and privacy.", no_args_is_help=True,
                  epilog="Example: llmkit audit bias sms-clf --data sms --out bias.html")


@app.command(epilog="Example: llmkit audit bias sms-clf --data sms --terms my-terms.yaml --out bias.html\n\n"
                     "llmkit audit bias shakespeare-nano --groups gender,religion --samples 20 --json")
def bias(
    model: Annotated[str, typer.Argument(help="Classifier or causal LM: registry name (name, name:vN, id) or a model folder.")],
    data: Annotated[str | None, typer.Option(help=field_help("bias", "data"))] = None,
    terms: Annotated[Path | None, typer.Option(help="YAML/JSON file {group: \\[\\[term, ...], ...] or \\[term, ...]} adding or overriding groups.")] = None,
    groups: Annotated[str | None, typer.Option(help="Comma-separated groups to audit (default: all).")] = None,
    templates: Annotated[bool | None, typer.Option("--templates/--no-templates", help=field_help("bias", "templates"), show_default=False)] = None,
    flip_threshold: Annotated[float | None, typer.Option(help=field_help("bias", "flip_threshold"))] = None,
    delta_threshold: Annotated[float | None, typer.Option(help=field_help("bias", "delta_threshold"))] = None,
    max_examples: Annotated[int | None, typer.Option(help=field_help("bias", "max_examples"))] = None,
    pairs: Annotated[Path | None, typer.Option(help="LM: YAML/JSON/JSONL file of {group, more, less} sentence pairs.")] = None,
    samples: Annotated[int | None, typer.Option(help=field_help("bias", "samples"))] = None,
    worst: Annotated[int | None, typer.Option(help=field_help("bias", "worst"))] = None,
    out: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Classifiers: swap gender, name, nationality and religion terms and measure how predictions move.
    Language models: stereotyped vs other sentence pairs by likelihood, and sentiment of completions per group."""
    from llmkit.audit.bias import bias_audit, summary_table, worst_table
    from llmkit.audit.lm_bias import LmBiasReport
    from llmkit.audit.lm_bias import summary_tables as lm_summary_tables

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("bias", data=data, terms=str(terms) if terms else None,
                      groups=[g.strip() for g in groups.split(",") if g.strip()] if groups else None, templates=templates,
                      flip_threshold=flip_threshold, delta_threshold=delta_threshold, max_examples=max_examples,
                      worst=worst, pairs=str(pairs) if pairs else None, samples=samples, out=str(out) if out else None)
    with ctx.log.status("auditing"):
        report = bias_audit(model, cfg, ctx.ws, ctx.registry)

    def show() -> None:
        if isinstance(report, LmBiasReport):
            for table in lm_summary_tables(report):
                console.print(table)
            console.print(f"flagged groups: {', '.join(report.flagged) or 'none'}" + (f"; report {out}" if out else ""))
            _registered(report)
            return
        console.print(summary_table(report))
        if report.worst:
            console.print(worst_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        flagged = ", ".join(report.flagged) or "none"
        console.print(f"flagged groups: {flagged}" + (f"; report {out}" if out else ""))
        _registered(report)

    ctx.emit(report.to_json(), show)


@app.command(epilog="Example: llmkit audit privacy shakespeare-nano --data shakespeare --samples 200 --out privacy.html")
def privacy(
    model: Annotated[str, typer.Argument(help="Causal LM: registry name (name, name:vN, id) or a model folder.")],
    data: Annotated[str | None, typer.Option(help=field_help("privacy", "data"))] = None,
    samples: Annotated[int | None, typer.Option(help=field_help("privacy", "samples"))] = None,
    sample_tokens: Annotated[int | None, typer.Option(help=field_help("privacy", "sample_tokens"))] = None,
    temperature: Annotated[float | None, typer.Option(help=field_help("privacy", "temperature"))] = None,
    memorization_samples: Annotated[int | None, typer.Option(help=field_help("privacy", "memorization_samples"))] = None,
    prefix_tokens: Annotated[int | None, typer.Option(help=field_help("privacy", "prefix_tokens"))] = None,
    suffix_tokens: Annotated[int | None, typer.Option(help=field_help("privacy", "suffix_tokens"))] = None,
    candidates: Annotated[int | None, typer.Option(help=field_help("privacy", "candidates"))] = None,
    seed: Annotated[int | None, typer.Option(help=field_help("privacy", "seed"))] = None,
    out: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """PII in sampled generations, verbatim continuation of training text, and the exposure of canaries
    planted with 'llmkit train pretrain --canaries N'."""
    from llmkit.audit.privacy import privacy_audit
    from llmkit.audit.privacy_report import canary_table, summary_table

    ctx = Ctx(config, workspace, db_url, json_out)
    cfg = ctx.section("privacy", data=data, samples=samples, sample_tokens=sample_tokens, temperature=temperature,
                      memorization_samples=memorization_samples, prefix_tokens=prefix_tokens, suffix_tokens=suffix_tokens,
                      candidates=candidates, seed=seed, out=str(out) if out else None)
    with ctx.log.status("auditing"):
        report = privacy_audit(model, cfg, ctx.ws, ctx.registry)

    def show() -> None:
        console.print(summary_table(report))
        if report.canaries:
            console.print(canary_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        if out:
            console.print(f"report {out}")
        _registered(report)

    ctx.emit(report.to_json(), show)


def _registered(report) -> None:
    if report.id:
        console.print(f"kept as eval {report.id}: {report.path}/report.html", highlight=False)
