"""`llmkit predict` (a classifier's labels for texts) and `llmkit merge` (LoRA adapter -> standalone model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from llmkit.cli.common import Ctx, console, valid_text
from llmkit.cli.options import configured
from llmkit.errors import UserError

MODEL_ARG = Annotated[str, typer.Argument(help="Classifier: registered name (name, name:vN, id or alias), a model folder or a "
                                               "Hugging Face Hub id.")]
ADAPTER_ARG = Annotated[str, typer.Argument(help="LoRA adapter: registered name (name, name:vN, id or alias) or an adapter folder.")]


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit predict spam-clf 'WINNER! Claim your prize now' 'see you at 6'\n\n"
                       "llmkit predict spam-clf --file messages.txt --json")(predict)
    app.command(epilog="Example: llmkit merge my-sft-lora --name my-sft")(merge)


def _read_texts(file: Path) -> list[str]:
    """One text per line of a .txt file, or the text field of each .jsonl line."""

    if not file.is_file():
        raise UserError(f"{file}: no such file")
    if file.suffix == ".jsonl":
        from llmkit.data.formats import jsonl_objects

        texts = [row["text"] for row in jsonl_objects(file, ("text",))]
    else:
        try:  # utf-8-sig: a Windows editor's BOM is not part of the first text
            texts = [line for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            from llmkit.data.encodings import likely_encodings

            found = likely_encodings(file.read_bytes()[: 1 << 20])  # a GBK file from a Chinese Windows, most often
            how = (f"it reads as {found[0][1]}: convert it (iconv -f {found[0][0]} -t utf-8 {file} > utf8.txt)"
                   if found else "save it as UTF-8")
            raise UserError(f"{file}: not UTF-8 text at byte {err.start}; {how} (predict reads UTF-8 only)") from None
    if not texts:
        raise UserError(f"{file}: no text in it (one text per line, or a 'text' field per .jsonl line)")
    return texts


@configured("predict")
def predict(
    ctx: Ctx, cfg,
    model: MODEL_ARG,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="A .txt file (one text per line) or .jsonl with a text field.")] = None,
) -> None:
    """Label texts with a trained classifier, with each label's probability."""
    from llmkit.predict import predict as run_predict

    given = [valid_text(t, f"TEXT argument {n}") for n, t in enumerate(texts or [], 1)]
    items = given + [valid_text(t, f"{file}: text {n}") for n, t in enumerate(_read_texts(file) if file else [], 1)]
    if not items:
        raise UserError("nothing to classify: give TEXT arguments or --file FILE")
    results = run_predict(model, items, cfg, ctx.registry)

    def show() -> None:
        labels = list(results[0]["probabilities"])
        table = Table("text", "label", *labels)
        for r in results:
            shown = r["text"] if len(r["text"]) <= 60 else r["text"][:57] + "..."
            table.add_row(Text(shown), Text(str(r["label"]), style="bold"), *(f"{r['probabilities'][label]:.3f}" for label in labels))
        console.print(table)

    ctx.emit(results, show)


@configured(None)
def merge(
    ctx: Ctx,
    model: ADAPTER_ARG,
    name: Annotated[str | None, typer.Option(help="Name of the merged model (default: <adapter>-merged).")] = None,
) -> None:
    """Fold a LoRA adapter into its base: a standalone Hugging Face model with the same outputs."""
    from llmkit.train.lora import merge as run_merge

    merged = run_merge(model, ctx.ws, ctx.registry, name=name, console=ctx.log)
    ctx.emit({"id": merged.id, "name": merged.name, "version": merged.version, "path": str(merged.path)},
             lambda: console.print(f"next: llmkit generate {merged.name} --prompt '...'"))
