"""`llmkit demo`: data -> train -> samples on the built-in corpus (or --data PATH)."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmkit.cli.common import Ctx, console, err_console
from llmkit.cli.options import configured


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit demo --minutes 2")(demo)


@configured("demo")
def demo(ctx: Ctx, cfg) -> None:
    """Run the whole loop on a built-in corpus: prepare data, train a small model, sample from it."""
    from llmkit.demo import demo as run_demo

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        result = run_demo(cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)

    def human() -> None:
        console.rule("done")
        console.print(f"val loss {result.val_loss:.3f}, perplexity [bold]{result.val_ppl:.2f}[/bold] after {result.steps} steps")
        console.print(f"dataset  {result.dataset}")
        console.print(f"model    {result.model}  ({result.model_path})")
        console.print(f"run      {result.run_path}  (metrics.jsonl, plots/loss.png, checkpoints/)")
        console.print(f"gguf     {result.gguf}  (llama.cpp; Ollama: the Modelfile beside it)")
        console.print(f"report   {result.report}  (test perplexity {result.evaluation['perplexity']:.2f}, "
                      f"{result.evaluation['decode_tokens_per_s']:.0f} tokens/s)")
        console.print("next:")
        console.print(f"  llmkit generate {result.model.split(':')[0]} --prompt 'def main():' --max-new-tokens 120")
        console.print(f"  llmkit data report {result.dataset.split(':')[0]}")
        console.print(f"  llmkit compare {result.model.split(':')[0]}")
        console.print("  llmkit ls")

    ctx.emit(asdict(result), human)
    if cfg.serve:
        _serve(ctx, result.serve_model, cfg.port)


def _serve(ctx: Ctx, model: str, port: int) -> None:
    """Serve the demo model until Ctrl-C; another free port when the configured one is taken."""
    import socket

    from llmkit.config import ServeConfig
    from llmkit.serve import serve

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            port = 0
    ctx.log.rule("serving")

    def ready(url: str) -> None:
        ctx.log.print(f"the demo model is live: web UI [bold]{url}/[/bold], OpenAI-compatible API {url}/v1 "
                      f"(model '{model.split(':')[0]}'); Ctrl-C stops it (--no-serve skips this step)")

    serve(ServeConfig(models=[model], port=port), ctx.ws, ctx.registry, console=ctx.log, on_ready=ready)
