"""`llmkit audit bias`: parse, call llmkit.audit.bias, print the table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from llmkit.cli.common import Ctx, check_writable_file, console
from llmkit.cli.options import configured

app = typer.Typer(help="Audit trained models for bias and privacy.", no_args_is_help=True,
                  epilog="Example: llmkit audit bias sms-clf --data sms --out bias.html")


@app.command(epilog="Example: llmkit audit bias sms-clf --data sms --terms my-terms.yaml --out bias.html\n\n"
                     "llmkit audit bias shakespeare-nano --groups gender,religion --samples 20 --json")
@configured("bias")
def bias(
    ctx: Ctx, cfg,
    model: Annotated[str, typer.Argument(help="Classifier or causal LM: registered name (name, name:vN, id or alias), a built-in "
                                              "(smollm2-135m, minilm-l6), a model folder or a Hugging Face Hub id.")],
) -> None:
    """Classifiers: swap gender, name, nationality and religion terms and measure how predictions move.
    Language models: stereotyped vs other sentence pairs by likelihood, and sentiment of completions per group,
    in English or, for a model whose tokenizer is mostly Chinese (or --lang zh), in Chinese (gender, region, age)."""
    from llmkit.audit.bias import bias_audit, summary_table, worst_table
    from llmkit.audit.lm_bias import LmBiasReport
    from llmkit.audit.lm_bias import summary_tables as lm_summary_tables

    if cfg.out:
        check_writable_file(cfg.out, "--out", "bias.html")
    with ctx.log.status("auditing"):
        report = bias_audit(model, cfg, ctx.ws, ctx.registry)

    def show() -> None:
        if isinstance(report, LmBiasReport):
            console.print(f"language: {report.language_reason}", markup=False, highlight=False)
            for table in lm_summary_tables(report):
                console.print(table)
            for warning in report.warnings:  # e.g. --data, which a language model's audit does not read
                console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
            console.print(f"flagged groups: {', '.join(report.flagged) or 'none'}" + (f"; report {cfg.out}" if cfg.out else ""))
            _registered(report)
            return
        console.print(summary_table(report))
        if report.worst:
            console.print(worst_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        flagged = ", ".join(report.flagged) or "none"
        console.print(f"flagged groups: {flagged}" + (f"; report {cfg.out}" if cfg.out else ""))
        _registered(report)

    ctx.emit(report.to_json(), show)


@app.command(epilog="Example: llmkit audit privacy shakespeare-nano --data shakespeare --samples 200 --out privacy.html")
@configured("privacy")
def privacy(
    ctx: Ctx, cfg,
    model: Annotated[str, typer.Argument(help="Causal LM: registered name (name, name:vN, id or alias), a built-in (smollm2-135m), a "
                                              "model folder or a Hugging Face Hub id.")],
) -> None:
    """PII in sampled generations, verbatim continuation of training text, and the exposure of canaries
    planted with 'llmkit train pretrain --canaries N'."""
    from llmkit.audit.privacy import privacy_audit
    from llmkit.audit.privacy_report import canary_table, summary_table

    if cfg.out:
        check_writable_file(cfg.out, "--out", "privacy.html")
    with ctx.log.status("auditing"):
        report = privacy_audit(model, cfg, ctx.ws, ctx.registry)

    def show() -> None:
        console.print(summary_table(report))
        if report.canaries:
            console.print(canary_table(report))
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        if cfg.out:
            console.print(f"report {cfg.out}")
        _registered(report)

    ctx.emit(report.to_json(), show)


def _registered(report) -> None:
    if report.id:
        console.print(f"kept as eval {report.id}: {report.path}/report.html", highlight=False)
