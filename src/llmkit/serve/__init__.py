"""`llmkit serve`: models behind an OpenAI-compatible HTTP API, with a web UI.

Python: `serve(cfg)` runs a server until interrupted; `start(cfg)` runs one in a background thread
and returns it (tests, notebooks, the demo).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llmkit import submodules
from llmkit.config import ServeConfig
from llmkit.errors import UserError
from llmkit.runtime.threads import cpu_cores

log = logging.getLogger("llmkit.serve")


@dataclass
class RunningServer:
    url: str
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        for served in self.app.state.llmkit.models.values():
            if served.engine:
                served.engine.close()


def build_app(cfg: ServeConfig, ws=None, registry=None, console=None):
    from llmkit.registry import Registry
    from llmkit.serve.auth import read_access
    from llmkit.serve.memory_fit import check, needs_of
    from llmkit.workspace import Workspace

    cfg = ServeConfig.given(cfg, "llmkit.serve.start")
    if not cfg.models:
        raise UserError("name at least one model to serve: llmkit serve MODEL [MODEL...], or serve.models in --config",
                        param="serve.models")
    for spec in cfg.models:
        _check_spec(spec, "MODEL")
    for spec in cfg.adapters:
        _check_spec(spec, "--adapter")
    # What can be checked without torch, the serving stack or a model loaded is checked first: a mistyped key
    # file, host or model name is answered in a second, not after the models have loaded.
    access = read_access(cfg)
    check_listen(cfg)
    for origin in cfg.cors_origins:
        _check_origin(origin)
    for proxy in cfg.trusted_proxies:
        try:
            proxy == "*" or ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise UserError(f"--trusted-proxy {proxy!r}: give the proxy's IP address or network (e.g. 10.0.0.5 or "
                            "10.0.0.0/8), or * for any", param="serve.trusted_proxies") from None
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    _check_names(cfg, registry)
    from llmkit.serve.adapters import check_bases

    check_bases(cfg.adapters, cfg.models, registry)  # each adapter's base is served: said before any model loads
    fits = check(needs_of(cfg, registry), cfg)  # before anything loads: a configuration that cannot fit is refused
    from llmkit.serve.adapters import NoFastBase, attach, split_spec
    from llmkit.serve.app import create_app
    from llmkit.serve.served import load_served

    _set_threads(cfg.threads)
    if console:
        console.print(fits)
    else:
        log.info(fits)
    models = {}
    adapters = [*cfg.adapters]
    for ref in cfg.models:
        if _adapter_on_served_base(ref, cfg.models, registry):
            adapters.append(ref)  # served on its base's batches rather than merged into a copy of it
            continue
        served = load_served(ref, cfg, registry)
        if served.id in models:
            raise UserError(f"two models named '{served.id}'; serve each name once")
        models[served.id] = served
        if console:
            what = f" -> {served.model.ref}" if served.model.id and served.model.ref != served.id else ""
            console.print(f"loaded [bold]{served.id}[/bold]{what} ({served.kind}, {served.backend})")
    for spec in adapters:
        name, ref = split_spec(spec)
        try:
            served = attach(name, ref, models, registry)
        except NoFastBase as off:
            # a base off the fast path: the adapter merged into a copy of it, under the name asked for (a speed and
            # memory difference, not an error: `--adapter` was refused where the same adapter listed as a model ran)
            served = load_served(spec, cfg, registry)
            if console:
                console.print(f"{served.id}: {off.base_id} decodes without llmkit's fast decoder, so the adapter does "
                              "not share its batches", markup=False, highlight=False)
        if served.id in models:
            raise UserError(f"two models named '{served.id}'; serve each name once")
        models[served.id] = served
        if console:
            console.print(f"loaded adapter [bold]{served.id}[/bold] on {served.parent or 'a merged copy of its base'}")
    return create_app(cfg, models, registry, ws, access)


def check_listen(cfg: ServeConfig) -> None:
    """Bind the address once before any model loads: a port in use or a host that is not this machine's is one line at
    once (uvicorn said it after the models had loaded, and the hint blamed the port for a bad host too)."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"serve.host = '{cfg.host}' is not an address or a name this machine resolves "
                        f"({getattr(err, 'strerror', None) or err}); use 127.0.0.1 (the default), 0.0.0.0 for every "
                        "interface, or one of this machine's addresses", param="serve.host") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no conflict
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"serve.port = {cfg.port}: {cfg.host}:{cfg.port} is in use by another program; pick "
                                "another with --port N (0 = any free port)", param="serve.port") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"serve.host = '{cfg.host}' is not an address of this machine; use 127.0.0.1 (the "
                                "default), 0.0.0.0 for every interface, or one of its addresses", param="serve.host") from None
            if err.errno == errno.EACCES:
                raise UserError(f"serve.port = {cfg.port}: ports below 1024 need root; use a port from 1024 up (8000 "
                                "is the default)", param="serve.port") from None
            raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror}") from None


def _check_spec(spec: str, where: str) -> None:
    """NAME=MODEL with both sides given, NAME one word: `x=` served the current folder (and said it was no model
    folder), `=x` served x under its own name, and a name with a space was served as such."""
    name, eq, ref = spec.rpartition("=")
    model = where == "MODEL"
    param, example = ("serve.models", "NAME=MODEL, e.g. chat=smollm2-135m") if model else \
        ("serve.adapters", "NAME=ADAPTER, e.g. support=my-lora")
    if not ref.strip():
        what = "nothing after '='" if eq else "it is empty"
        raise UserError(f"{where} {spec!r}: {what}; give {'a model' if model else 'an adapter'}, or {example}",
                        param=param)
    if eq and (not name or any(c.isspace() or not c.isprintable() for c in name)):
        why = "no name before '='" if not name else f"the name {name!r} holds a space or a control character"
        raise UserError(f"{where} {spec!r}: {why}; give a one-word NAME, as in {example}, or leave out 'NAME=' to "
                        "serve it under its own name", param=param)


def _check_names(cfg: ServeConfig, registry) -> None:
    """Two served models under one name, said before either loads."""
    from llmkit.serve.served import served_name

    seen: set[str] = set()
    for ref in cfg.models:
        name = served_name(ref, registry)
        if name in seen:
            raise UserError(f"two models named '{name}'; serve each name once (NAME=MODEL serves a model under "
                            "another name)")
        seen.add(name)


def _adapter_on_served_base(spec: str, specs: list[str], registry) -> bool:
    """Whether a served model is a LoRA adapter of another model served beside it."""
    from llmkit.models.io import adapter_base, is_adapter, resolve_model
    from llmkit.serve.adapters import split_spec

    model = resolve_model(split_spec(spec)[1], registry)
    if not is_adapter(model.path):
        return False
    base = Path(adapter_base(model).path).resolve()
    return any(Path(resolve_model(split_spec(other)[1], registry).path).resolve() == base for other in specs if other != spec)


def _check_origin(origin: str) -> None:
    """A browser sends Origin as scheme://host[:port], nothing after: a path or a missing scheme never matched, and
    the browser app failed with a CORS error in its user's console."""
    from urllib.parse import urlsplit

    if origin == "*":
        return
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.hostname and not parts.path and not parts.query and not parts.fragment:
        return
    guess = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else f"https://{origin.strip('/').split('/')[0]}"
    raise UserError(f"--cors-origin {origin!r}: an origin is scheme://host[:port] with nothing after it, as browsers send "
                    f"it; did you mean '{guess}'?", param="serve.cors_origins")


def _set_threads(threads: int) -> None:
    # Compute threads that spin on every core starve the event loop that streams the tokens (and
    # make every step wait for a descheduled thread); one core for HTTP serves more tokens overall.
    # Two torch workers split that between them (see served.load_served).
    import torch

    torch.set_num_threads(threads or max(1, (cpu_cores() - 1) // 2))


def _check_exposure(cfg: ServeConfig, app, console) -> None:
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback and app.state.llmkit.auth.open and console:
        console.print(f"[yellow]warning:[/yellow] serving on {cfg.host} without an API key: anyone who can reach this "
                      "address can use the models; pass --api-key or --api-keys-file")
    if "*" in cfg.cors_origins and app.state.llmkit.auth.open and console:
        # the Host check does not help here: the browser sends the server's own name, only the Origin is foreign
        console.print("[yellow]warning:[/yellow] --cors-origin * without an API key: any web page open in a browser "
                      "on this machine can use the models and read the dashboard's registry; pass --api-key, or name "
                      "the origins that may call (--cors-origin https://app.example.com)")
    from llmkit.serve.hosts import is_wildcard

    if is_wildcard(cfg.host) and not cfg.allowed_hosts and console:
        console.print(f"[yellow]warning:[/yellow] bound to {cfg.host} without --allowed-host: any Host name is answered, "
                      "so DNS rebinding is not blocked; name the hosts clients use with --allowed-host NAME")


KEEP_ALIVE_S = 75  # as nginx's default; longer than any common client's idle expiry


def _uvicorn(cfg: ServeConfig, app):
    import uvicorn

    # An idle keep-alive connection is kept well past the clients' own expiry (httpx, so the `openai`
    # client, drops its idle connections after 5 s, uvicorn's default here): with both at 5 s a client
    # reuses a connection at the moment the server closes it and the request dies with a connection reset.
    # X-Forwarded-For only from the proxies named: uvicorn's default trusts 127.0.0.1, so a local client could name
    # any address (and dodge the wrong-key throttle), while a proxy elsewhere made every client one address.
    # The access log is the app's own (serve.app): uvicorn's had no time or duration and logged query strings.
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_S,
                            proxy_headers=bool(cfg.trusted_proxies), forwarded_allow_ips=",".join(cfg.trusted_proxies))
    return uvicorn.Server(config)


def _dual_stack_socket(port: int):
    """A socket on every IPv6 and IPv4 address: `::` means every interface to users, as 0.0.0.0 does, but
    asyncio's create_server (so uvicorn given host "::") sets IPV6_V6ONLY and IPv4 clients were refused."""
    import socket

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(("::", port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on [::]:{port}: {err.strerror} (is the port in use? try --port 0)") from None
    return sock


def start(cfg: ServeConfig, ws=None, registry=None, console=None, app=None) -> RunningServer:
    """Start a server in a background thread; returns once it accepts connections."""
    cfg = ServeConfig.given(cfg, "llmkit.serve.start")
    app = app or build_app(cfg, ws, registry, console)
    _check_exposure(cfg, app, console)
    server = _uvicorn(cfg, app)
    server.install_signal_handlers = lambda: None  # only the main thread may; the caller owns signals
    sockets = [_dual_stack_socket(cfg.port)] if cfg.host.strip("[]") == "::" else None
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True, name="llmkit-uvicorn")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UserError(f"the server did not start on {cfg.host}:{cfg.port} (is the port in use? try --port 0)")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return RunningServer(f"http://{_url_host(host)}:{port}", app, server, thread)


def serve(cfg: ServeConfig, ws=None, registry=None, console=None, on_ready=None) -> None:
    """Serve until Ctrl-C; `on_ready(url)` is called once the server accepts connections."""
    running = start(cfg, ws, registry, console)
    _stop_on_signals()
    if on_ready:
        on_ready(running.url)
    try:
        while running.thread.is_alive():
            running.thread.join(0.5)
    except KeyboardInterrupt:
        drain(running, cfg.shutdown_timeout, console)
    finally:
        running.stop()


def drain(running: RunningServer, timeout: float, console=None) -> None:
    """Let the requests in flight finish (up to `timeout` s; a second signal ends the wait) while new ones get 503
    and /health says draining: SIGTERM is how Kubernetes, systemd and every rolling deploy stop a server, and
    stopping the engines at once failed every answer being written."""
    state = running.app.state.llmkit
    state.draining = True
    deadline = time.monotonic() + timeout
    if state.busy() and timeout and console:
        console.print(f"stopping: {state.busy()} requests in flight get up to {timeout:g} s to finish "
                      "(new ones get 503; Ctrl-C again stops now)")
    try:
        while state.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the server cleanly. Set explicitly: a process started with SIGINT ignored
    (a background job, some supervisors) would otherwise never see Ctrl-C, and SIGTERM would kill it
    without closing the engines."""
    def stop(_signum, _frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# `llmkit.serve.app.create_app` after a plain `import llmkit`: a submodule is imported when first named
__getattr__ = submodules(__name__)
