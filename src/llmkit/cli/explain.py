"""`llmkit explain`: which tokens a classifier's label or a language model's next token depends on."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from llmkit.cli.common import Ctx, check_writable_file, console, valid_text
from llmkit.cli.options import configured
from llmkit.errors import UserError

MODEL_ARG = Annotated[str, typer.Argument(help="Classifier or causal LM: registered name (name, name:vN, id or alias), a built-in "
                                               "(smollm2-135m, minilm-l6), a model folder or a Hugging Face Hub id.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit explain spam-clf 'WINNER!! Claim your free prize now' --method ig --out explain.html\n\n"
                       "llmkit explain shakespeare-nano 'ROMEO: I' --completion ' love' --method occlusion --json")(explain)


@configured("explain")
def explain(
    ctx: Ctx, cfg,
    model: MODEL_ARG,
    text: Annotated[str, typer.Argument(help="The text to explain.", show_default=False)],
    next_token: Annotated[bool, typer.Option("--next-token", help="Causal LM: explain the next token (the default).")] = False,
) -> None:
    """Token attributions (Integrated Gradients, occlusion, Kernel SHAP or attention rollout) with a faithfulness check."""
    from llmkit.explain import explain as run_explain
    from llmkit.explain.report import summary_lines, terminal_text, write_html

    if next_token and "completion" in ctx.given:
        raise UserError("--next-token and --completion exclude each other: explain the next token or a completion")
    if next_token:
        from llmkit.models.io import resolve_model
        from llmkit.models.kind import model_kind

        kind = model_kind(resolve_model(model, ctx.registry))
        if kind != "causal":  # it explained the predicted label without a word
            raise UserError(f"--next-token is for causal language models; {model} is {'a classifier' if kind == 'classifier' else 'an encoder'}: "
                            "its explanation is of a label (the predicted one, or --target LABEL)")
        cfg.completion = None  # wins over a completion from the config file
    if cfg.target is not None and cfg.completion is not None:  # the target was silently dropped
        raise UserError("--target and --completion exclude each other: explain one next token (--target) or the "
                        "log-probability of a continuation (--completion)", param="explain.target")
    if cfg.out:  # said now, not after the model has loaded and the attribution has run
        check_writable_file(cfg.out, "--out", "explain.html")
    valid_text(text, "TEXT")
    for key in ("target", "completion"):
        if getattr(cfg, key):
            valid_text(getattr(cfg, key), f"--{key}")
    exp = run_explain(model, text, cfg, ctx.registry)
    for warning in exp.warnings:
        ctx.log.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    result = exp.to_dict()
    if cfg.out:
        result["html"] = str(write_html(exp, cfg.out))

    def show() -> None:
        console.print(terminal_text(exp))
        for line in summary_lines(exp):
            console.print(line, highlight=False, markup=False)
        if cfg.out:
            console.print(f"report: {result['html']}", highlight=False, markup=False)

    ctx.emit(result, show)
