"""`llmkit serve`: models behind an OpenAI-compatible API and the web UI."""

from __future__ import annotations

import typer

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit serve shakespeare-nano sms-clf --port 8000 --api-key $KEY   "
                       '(then: curl localhost:8000/v1/models -H "Authorization: Bearer $KEY", or open http://127.0.0.1:8000/)')(serve)


@configured("serve", arguments=("models",),  # not required: serve.models in --config names them too
            repeat=("api_keys", "admin_keys", "adapters", "cors_origins", "allowed_hosts", "trusted_proxies"),
            flags={"api_keys": ("--api-key",), "admin_keys": ("--admin-key",), "adapters": ("--adapter",),
                   "cors_origins": ("--cors-origin",), "allowed_hosts": ("--allowed-host",),
                   "trusted_proxies": ("--trusted-proxy",)},
            json=False)
def serve(ctx: Ctx, cfg) -> None:
    """Serve models with an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/embeddings), llmkit's
    /v1/classify, /v1/explain, /v1/feedback and /v1/adapters, /health, /metrics and a web UI; SIGTERM drains, then stops."""
    from llmkit.serve import serve as run

    def ready(url: str) -> None:
        ui = f", web UI: {url}/" if cfg.ui else ""  # --no-ui: / is a 404
        console.print(f"serving on [bold]{url}[/bold]  (API: {url}/v1{ui}, docs: {url}/docs); Ctrl-C stops")

    run(cfg, ctx.ws, ctx.registry, console=console, on_ready=ready)


