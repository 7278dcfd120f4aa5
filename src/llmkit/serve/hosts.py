"""The Host allow-list, against DNS rebinding: a page on another site can point its own name at
127.0.0.1 and have the visitor's browser call the server, but the browser then sends that name as
`Host`. So the server answers only the names it expects: the loopback names, the address it is bound
to, and those given with `--allowed-host` (and, for /health and /metrics, any IP address). Bound to every interface (0.0.0.0 or ::) with none given,
it cannot know the names clients will use and accepts any (`llmkit serve` warns); `*` says so explicitly.
"""

from __future__ import annotations

import ipaddress
import json

from llmkit.errors import UserError
from llmkit.serve.errors import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Kubernetes' probes and Prometheus' pod discovery call the pod's IP address, which is not known when the
# server starts: these two answer any address. A rebinding page makes the browser send its own *name*.
PROBES = ("/health", "/metrics")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def _normal(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def is_wildcard(bind_host: str) -> bool:
    return _normal(bind_host) in WILDCARD_BINDS


def allowed_hosts(bind_host: str, extra: list[str]) -> frozenset[str] | None:
    """The Host names the server answers, or None for any (`*` given, or a wildcard bind without names)."""
    names = set()
    for given in extra:
        name = _normal(given)
        if name != "*" and (not name or any(c in name for c in "/ @") or (":" in name and not _is_ip(name))):
            raise UserError(f"--allowed-host {given!r}: give a host name or IP address, without scheme or port "
                            "(e.g. --allowed-host llm.example.com), or * for any")
        names.add(name)
    if "*" in names or (is_wildcard(bind_host) and not names):
        return None
    names.update(LOOPBACK_NAMES)
    if not is_wildcard(bind_host):
        names.add(_normal(bind_host))
    return frozenset(names)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: bytes) -> str:
    """The name of a Host header, without its port: "[::1]:8000" -> "::1", "Example.COM:80" -> "example.com"."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    name, colon, port = text.rpartition(":")
    return _normal(name) if colon and port.isdigit() else _normal(text)


class HostCheck:
    """ASGI middleware: 400 (OpenAI-shaped) for a request whose Host is not on the allow-list."""

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed is None:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"host")
        if header is not None and host_name(header) in self.allowed:
            return await self.app(scope, receive, send)
        if header is not None and scope.get("path") in PROBES and _is_ip(host_name(header)):
            return await self.app(scope, receive, send)
        await self._reject(send, header)

    async def _reject(self, send, header: bytes | None):
        shown = "".join(c for c in (header or b"").decode("latin-1") if c.isprintable())[:100]
        names = ", ".join(f"[{n}]" if ":" in n else n for n in sorted(self.allowed))
        message = (f"Host '{shown}' is not served here (this server answers {names}); to reach it by this name, "
                   f"start it with --allowed-host {host_name(header or b'') or 'NAME'}") if header is not None else \
            f"the request has no Host header; send one of {names}"
        body = json.dumps(error_body(message, "invalid_request_error", None, "host_not_allowed")).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
