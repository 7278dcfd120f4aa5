"""API keys, per-key rate limits and the request body limit."""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from pathlib import Path

from fastapi import Request

from llmkit.errors import UserError
from llmkit.serve.errors import ApiError, error_body


def read_keys(keys: list[str], keys_file: str | None) -> list[str]:
    """Keys from the flags, the file (one per line, # comments) and $LLMKIT_API_KEY (for containers)."""
    out = [k.strip() for k in keys if k.strip()]
    if keys_file:
        path = Path(keys_file).expanduser()
        if not path.is_file():
            raise UserError(f"--api-keys-file {keys_file}: no such file")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line and (len(line) < 8 or any(c.isspace() for c in line)):
                raise UserError(f"{keys_file}:{n}: an API key is one word of at least 8 characters")
            if line:
                out.append(line)
    if os.environ.get("LLMKIT_API_KEY"):
        out.append(os.environ["LLMKIT_API_KEY"].strip())
    return out


class Auth:
    def __init__(self, keys: list[str], rate_per_minute: int = 0):
        self.keys = [k.encode() for k in keys]
        self.rate = rate_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last refill)
        self.lock = threading.Lock()

    @property
    def open(self) -> bool:
        return not self.keys

    def check(self, authorization: str | None, client: str) -> str:
        """The caller's identity (key index, or client address when open); ApiError 401/429 otherwise."""
        who = f"client:{client}"
        if self.keys:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise ApiError(401, "missing API key; send 'Authorization: Bearer YOUR_KEY'", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
            given = token.strip().encode()
            # Compare with every key, whatever matches, so timing says nothing about which or how much.
            matches = [hmac.compare_digest(given, k) for k in self.keys]
            if not any(matches):
                raise ApiError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            who = f"key:{matches.index(True)}"
        self._limit(who)
        return who

    def _limit(self, who: str) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        per_second = self.rate / 60.0
        with self.lock:
            tokens, last = self.buckets.get(who, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * per_second)
            if tokens < 1.0:
                self.buckets[who] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / per_second)
                raise ApiError(429, f"rate limit of {self.rate} requests per minute reached; retry in {wait} s",
                               code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
            self.buckets[who] = (tokens - 1.0, now)


async def authorize(request: Request) -> str:
    """The route dependency: the caller's key (or address) when allowed; a 401 or 429 counted as rejected."""
    state = request.app.state.llmkit
    try:
        return state.auth.check(request.headers.get("authorization"), request.client.host if request.client else "?")
    except ApiError as err:
        state.metrics.rejected.labels("auth" if err.status == 401 else "rate_limit").inc()
        raise


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        import json

        body = json.dumps(error_body(f"request body is larger than {self.max_bytes // 1024} KiB", "invalid_request_error",
                                     None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
