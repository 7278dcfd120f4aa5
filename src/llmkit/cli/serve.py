"""`llmkit serve`: models behind an OpenAI-compatible API and the web UI."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, WorkspaceOpt, console, field_help


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit serve shakespeare-nano sms-clf --port 8000 --api-key $KEY   "
                       "(then: curl localhost:8000/v1/models -H 'Authorization: Bearer $KEY', or open http://127.0.0.1:8000/)")(serve)


def serve(
    models: Annotated[list[str], typer.Argument(help=field_help("serve", "models"))],
    backend: Annotated[str | None, typer.Option(help=field_help("serve", "backend"))] = None,
    host: Annotated[str | None, typer.Option(help=field_help("serve", "host"))] = None,
    port: Annotated[int | None, typer.Option(help=field_help("serve", "port"))] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="A Bearer key clients must send; repeat for several.")] = None,
    api_keys_file: Annotated[str | None, typer.Option(help=field_help("serve", "api_keys_file"))] = None,
    max_batch: Annotated[int | None, typer.Option(help=field_help("serve", "max_batch"))] = None,
    max_queue: Annotated[int | None, typer.Option(help=field_help("serve", "max_queue"))] = None,
    workers: Annotated[int | None, typer.Option(help=field_help("serve", "workers"))] = None,
    threads: Annotated[int | None, typer.Option(help=field_help("serve", "threads"))] = None,
    max_tokens: Annotated[int | None, typer.Option(help=field_help("serve", "max_tokens"))] = None,
    timeout: Annotated[float | None, typer.Option(help=field_help("serve", "timeout"))] = None,
    rate_limit: Annotated[int | None, typer.Option(help=field_help("serve", "rate_limit"))] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allow browser calls from this origin; repeat for several.")] = None,
    log_requests: Annotated[bool | None, typer.Option("--log-requests", help=field_help("serve", "log_requests"),
                                                      show_default=False)] = None,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Serve the API only.")] = False,
    config: ConfigOpt = None, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None,
) -> None:
    """Serve models with an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/embeddings), /v1/classify, feedback, metrics and a web UI."""
    from llmkit.serve import serve as run

    ctx = Ctx(config, workspace, db_url, False)
    cfg = ctx.section("serve", models=models, backend=backend, host=host, port=port, api_keys=api_key or None,
                      api_keys_file=api_keys_file, max_batch=max_batch, max_queue=max_queue, workers=workers, threads=threads,
                      max_tokens=max_tokens, timeout=timeout, rate_limit=rate_limit, cors_origins=list(cors_origin) if cors_origin else None,
                      log_requests=log_requests, ui=False if no_ui else None)

    def ready(url: str) -> None:
        console.print(f"serving on [bold]{url}[/bold]  (API: {url}/v1, web UI: {url}/, docs: {url}/docs); Ctrl-C stops")

    run(cfg, ctx.ws, ctx.registry, console=console, on_ready=ready)


