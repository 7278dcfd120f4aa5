"""`llmkit demo`: the scratch act (data -> train -> samples -> compress) and the real-model act (tune -> compare -> ship)."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmkit.cli.common import Ctx, console, err_console
from llmkit.cli.options import configured


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit demo --act scratch --minutes 2")(demo)


@configured("demo")
def demo(ctx: Ctx, cfg) -> None:
    """Both halves of the product: a small model from scratch, then a real pretrained chat model tuned with LoRA,
    compared with its base and exported (--act scratch|real|both)."""
    from llmkit.demo import demo as run_demo

    if "data" in ctx.given and "act" not in ctx.given:
        # --data is the scratch act's text: the real act (SmolLM2 tuned, ~7 more minutes) was not what was asked for
        cfg.act = "scratch"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"),
                  TimeElapsedColumn(), console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        result = run_demo(cfg, ctx.ws, ctx.registry, console=ctx.log, progress=progress)

    def human() -> None:
        console.rule("done")
        if (s := result.scratch) is not None:
            console.print("[bold]from scratch[/bold]")
            console.print(f"val loss {s.val_loss:.3f}, perplexity [bold]{s.val_ppl:.2f}[/bold] after {s.steps} steps")
            console.print(f"dataset  {s.dataset}")
            console.print(f"model    {s.model}  ({s.model_path})")
            console.print(f"run      {s.run_path}  (metrics.jsonl, plots/loss.png, checkpoints/)")
            console.print(f"gguf     {s.gguf}  (llama.cpp; Ollama: the Modelfile beside it)")
            console.print(f"report   {s.report}  (test perplexity {s.evaluation['perplexity']:.2f}, "
                          f"{s.evaluation['bits_per_byte']:.3f} bits per byte, "
                          f"{s.evaluation['decode_tokens_per_s']:.0f} tokens/s)")
        if (r := result.real) is not None:
            console.print("[bold]a real chat model[/bold]")
            console.print(f"base     {r.base}, tuned with LoRA for {r.steps} steps on {r.dataset} → {r.model}")
            console.print(f"gate     {r.gate['verdict']}  (llmkit show {r.gate['id']})")
            console.print(f"gguf     {r.gguf}  (with its chat template; Ollama: the Modelfile beside it)")
        if result.skipped:
            console.print(result.skipped)
        console.print("next:")
        if (s := result.scratch) is not None:
            prompt = s.samples[0]["prompt"] if not s.samples[0]["prompt"].isascii() else "def main():"  # a poem's opening
            console.print(f"  llmkit generate {s.model.split(':')[0]} --prompt '{prompt}' --max-new-tokens 120",
                          markup=False, highlight=False)
            console.print(f"  llmkit data report {s.dataset.split(':')[0]}")
        if (r := result.real) is not None:
            console.print(f"  llmkit chat {r.model.split(':')[0]}")
            console.print(f"  llmkit promote {r.model.split(':')[0]} --alias prod && llmkit serve prod")
        console.print("  llmkit ls")

    ctx.emit(asdict(result), human)
    if cfg.serve and result.serve_models:
        _serve(ctx, result.serve_models, cfg.port)


def _serve(ctx: Ctx, models: list[str], port: int) -> None:
    """Serve the demo models until Ctrl-C; another free port when the configured one is taken."""
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
        names = ", ".join(f"'{m.split(':')[0]}'" for m in models)
        ctx.log.print(f"the demo {'models are' if len(models) > 1 else 'model is'} live: web UI [bold]{url}/[/bold], "
                      f"OpenAI-compatible API {url}/v1 (models {names}); Ctrl-C stops it (--no-serve skips this step)")

    serve(ServeConfig(models=models, port=port), ctx.ws, ctx.registry, console=ctx.log, on_ready=ready)
