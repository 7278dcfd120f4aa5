"""The HTTP app: `create_app(cfg, models, registry, workspace)` assembles the routers (`serve.routes`),
the error handlers, metrics, CORS, the body limit and the web UI around loaded models; the `llmkit serve`
command and the tests both run it under uvicorn. Every route answers a client's mistake with a 4xx
in OpenAI's error shape (see errors.py), never a 500.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles

import llmkit.serve.schemas as s
from llmkit.config import ServeConfig
from llmkit.serve.auth import Access, Auth, BodyLimit, authorize
from llmkit.serve.errors import ApiError, error_response, install_handlers
from llmkit.serve.hosts import HostCheck
from llmkit.serve.routes import adapters_api, llmkit_api, openai_api, ops
from llmkit.serve.served import ServedModel
from llmkit.serve.state import ServerState

STATIC = Path(__file__).parent / "static"
# The web UI's pages: scripts only from its own files (an event handler or <script> that ever slipped into the DOM
# from a model's answer, a registry name or a report does not run), requests only to this server, and no framing by
# another site (which could dress the page up and have the user click in it: clickjacking). Styles inline are
# allowed: the UI colours tokens with style attributes. A report the UI opens in a blob page inherits this policy.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class UiFiles(StaticFiles):
    """The web UI's files, each with UI_HEADERS."""

    async def get_response(self, path: str, scope):
        response = await super().get_response(path, scope)
        response.headers.update(UI_HEADERS)
        return response


def access_line(request: Request, status: int, seconds: float) -> None:
    """One line per request on stdout: UTC time, client, method, path (never the query string, where a client may
    put a key), status and the time to the response's start (a stream's first byte). Never a body or a header."""
    client = request.client.host if request.client else "-"
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(f"{stamp} {client} {request.method} {request.url.path} {status} {seconds * 1000:.0f} ms", flush=True)


class Observed:
    """ASGI middleware, outermost: every response counted in the metrics and, with --access-log, written to the access
    log, those refused before the app runs included (a Host not served, a body over the limit: the probes an
    operator most wants to see were the ones missing)."""

    def __init__(self, app, state: ServerState, log: bool):
        self.app, self.state, self.log = app, state, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        # the request's arrival, for what is timed from it further in (request.state.arrived: time to first token)
        scope.setdefault("state", {})["arrived"] = start
        started = timed = False

        def record(status: int) -> None:
            elapsed = time.perf_counter() - start  # to the response's start: a stream's first byte
            self.state.metrics.requests.labels(_path(scope), str(status)).inc()
            if self.log:
                access_line(Request(scope), status, elapsed)

        def time_it() -> None:
            # The latency histogram is to the last byte: a stream's whole length, as its client waited for it (timed at
            # the response's start, 32 streams of 26 s each were 0.9 s on average).
            nonlocal timed
            if not timed:
                timed = True
                self.state.metrics.latency.labels(_path(scope)).observe(time.perf_counter() - start)

        async def sending(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                # counted and logged before the response goes out: a client that has its answer finds it logged
                # (after the body, a server stopped at once could lose the line: seen with a signal sent at once)
                started = True
                record(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                time_it()

        try:
            await self.app(scope, receive, sending)
        finally:
            if not started:  # an unhandled exception becomes the 500 of Starlette's outermost handler
                record(500)
            time_it()  # a stream its client left: to when the server stopped sending


def _path(scope) -> str:
    return getattr(scope.get("route"), "path", "other")


def _api_docs(app: FastAPI) -> None:
    """/docs: Swagger UI on this server's own copy of its files (those the fastapi-offline package ships: Swagger UI
    5, which reads the OpenAPI 3.1 FastAPI writes; swagger-ui-bundle's 4.x cannot). FastAPI's page loads them from a
    CDN, so offline (an air-gapped machine, this one) /docs was a blank page."""
    from importlib.resources import files as package_files

    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        static = package_files("fastapi_offline") / "static"
    except ModuleNotFoundError:  # an install that predates it in [serve]: FastAPI's page, its files from the CDN
        static = None
    assets = "/docs/assets"
    if static is not None:
        app.mount(assets, StaticFiles(directory=str(static)), name="docs-assets")
    files = {"swagger_js_url": f"{assets}/swagger-ui-bundle.js", "swagger_css_url": f"{assets}/swagger-ui.css",
             "swagger_favicon_url": f"{assets}/favicon.png"} if static is not None else {}

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="llmkit API", **files)


def create_app(cfg: ServeConfig, models: dict[str, ServedModel], registry, workspace, access: Access) -> FastAPI:
    """`access`: the config's keys and hosts, read before the models loaded (serve.build_app)."""
    state = ServerState(cfg, models, registry, workspace, Auth(access.api_keys, cfg.rate_limit))
    state.admin = Auth(access.admin_keys)  # a second key set, for the routes that change the server
    app = FastAPI(title="llmkit", version="1", summary="OpenAI-compatible API of llmkit models",
                  openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    app.state.llmkit = state
    app.state.registry, app.state.workspace = registry, workspace
    install_handlers(app)
    for served in models.values():
        if served.engine and not served.parent:  # an adapter shares its base's engine, counted as the base
            served.engine.on_step = state.metrics.batch.labels(served.id).observe
            served.engine.on_cancel = state.metrics.cancelled.labels(served.id).inc
            served.engine.on_prefill = state.metrics.prefill.labels(served.id).inc

    @app.middleware("http")
    async def draining_and_in_flight(request: Request, call_next):
        if state.draining and request.url.path != "/health":  # stopping: a load balancer retries elsewhere
            state.metrics.rejected.labels("shutting_down").inc()
            return error_response(ApiError(503, "the server is shutting down; send the request to another replica",
                                           code="server_shutting_down", headers={"Retry-After": "1"}))
        state.in_flight += 1
        try:
            return await call_next(request)
        finally:
            state.in_flight -= 1

    for router in (ops.router, openai_api.router, llmkit_api.router, adapters_api.router):
        app.include_router(router)
    _api_docs(app)
    if cfg.ui:  # the dashboard's data (the whole registry) is the UI's: an API-only server does not show it
        from llmkit.serve.dashboard import router as dashboard
        from llmkit.serve.dashboard_studies import router as studies

        for router in (dashboard, studies):
            app.include_router(router, dependencies=[Depends(authorize)], responses=s.ERRORS)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Any request header: the openai JS SDK sends its own (x-stainless-*), and a browser refuses the whole request
        # when one is not allowed. DELETE for the admin route that unloads an adapter.
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["*"])
    if cfg.ui and STATIC.is_dir():
        from fastapi.responses import RedirectResponse

        # Under /ui rather than /: a mount at / would answer every unmatched path (GET on a POST
        # route included) with its own 404 instead of the API's 405.
        app.mount("/ui", UiFiles(directory=STATIC, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse("/ui/")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_kb * 1024)
    # Outermost but for Observed: a request for a name the server does not answer is refused before anything else runs.
    app.add_middleware(HostCheck, allowed=access.hosts)
    app.add_middleware(Observed, state=state, log=cfg.access_log)
    return app
