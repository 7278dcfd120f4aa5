"""API keys (one length rule for every source), per-key rate limits, failed-auth throttling per client
address and the request body limit."""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from llmkit.errors import UserError
from llmkit.serve.errors import ApiError, error_body

MIN_KEY_LENGTH = 8


def _checked_key(key: str, where: str) -> str:
    """The one rule for every key, wherever it comes from: one word of at least MIN_KEY_LENGTH characters."""
    if any(c.isspace() for c in key):  # (a key is sent in a header, where it would be cut at the space)
        raise UserError(f"{where}: an API key is one word, and this one has spaces in it; use a random key without "
                        "spaces, e.g. from `openssl rand -hex 16`")
    if len(key) < MIN_KEY_LENGTH:
        raise UserError(f"{where}: an API key is one word of at least {MIN_KEY_LENGTH} characters "
                        f"(this one has {len(key)}); use a longer random key, e.g. from `openssl rand -hex 16`")
    return key


def read_admin_keys(keys: list[str], api_keys: list[str], keys_file: str | None = None) -> list[str]:
    """The admin routes' keys: --admin-key, --admin-keys-file and $LLMKIT_ADMIN_KEY (never $LLMKIT_API_KEY), none
    equal to an API key, or every client holding that API key could change what the server runs."""
    out = _keys(keys, "--admin-key", keys_file, "--admin-keys-file", "LLMKIT_ADMIN_KEY")
    if any(hmac.compare_digest(a.encode(), k.encode()) for a in out for k in api_keys):
        raise UserError("--admin-key: an admin key must differ from every API key (--api-key, --api-keys-file, "
                        "$LLMKIT_API_KEY); give it its own random key")
    return out


def read_keys(keys: list[str], keys_file: str | None) -> list[str]:
    """Keys from the flags, the file (one per line, # comments) and $LLMKIT_API_KEY (for containers)."""
    return _keys(keys, "--api-key", keys_file, "--api-keys-file", "LLMKIT_API_KEY")


def _keys(keys: list[str], flag: str, keys_file: str | None, file_flag: str, env: str) -> list[str]:
    """Every source given must hold a key: an empty value is a mistake (a secret mounted empty, `--api-key "$KEY"`
    with KEY unset, a variable set to nothing) and served the API with no key at all, while a source left out
    means no key from it."""
    out = []
    for k in keys:
        if not k.strip():
            raise UserError(f"{flag} is empty (an unset variable?); give the key, or leave {flag} out")
        out.append(_checked_key(k.strip(), flag))
    if keys_file:
        path = Path(keys_file).expanduser()
        if not path.is_file():
            raise UserError(f"{file_flag} {keys_file}: no such file")
        found = 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(_checked_key(line, f"{keys_file}:{n}"))
                found += 1
        if not found:
            raise UserError(f"{file_flag} {keys_file} holds no key (empty, or comments only); put one key per line")
    if env in os.environ:
        if not os.environ[env].strip():
            raise UserError(f"${env} is set but empty; set it to the key, or unset it")
        out.append(_checked_key(os.environ[env].strip(), f"${env}"))
    return out


@dataclass(frozen=True)
class Access:
    """Who may use a server: its API keys, admin keys and the Host names it answers (None: any)."""

    api_keys: list[str]
    admin_keys: list[str]
    hosts: frozenset[str] | None


def read_access(cfg) -> Access:
    """The keys (flags, file, environment) and host names of a serve config, each checked; one-line UserErrors."""
    from llmkit.serve.hosts import allowed_hosts

    api_keys = read_keys(cfg.api_keys, cfg.api_keys_file)
    return Access(api_keys, read_admin_keys(cfg.admin_keys, api_keys, cfg.admin_keys_file),
                  allowed_hosts(cfg.host, cfg.allowed_hosts))


# Failed-auth throttling: this many wrong keys from one client address within the window, and that
# address gets 429 (its keys are not even compared) until the oldest failure leaves the window. Ten a
# minute is plenty for a person who mistyped and makes guessing a key hopeless.
FAILED_AUTH_LIMIT = 10
FAILED_AUTH_WINDOW = 60.0
_TRACKED_ADDRESSES = 65_536  # memory bound for the failure records (oldest addresses dropped first)


class Auth:
    def __init__(self, keys: list[str], rate_per_minute: int = 0, failure_limit: int = FAILED_AUTH_LIMIT,
                 failure_window: float = FAILED_AUTH_WINDOW):
        self.keys = [k.encode() for k in keys]
        self.rate = rate_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last refill)
        self.failure_limit, self.failure_window = failure_limit, failure_window
        self.failures: dict[str, deque[float]] = {}  # client address -> times of its recent wrong keys
        self.lock = threading.Lock()

    @property
    def open(self) -> bool:
        return not self.keys

    def check(self, authorization: str | None, client: str, limited: bool = True) -> str:
        """The caller's identity (key index, or client address when open); ApiError 401/429 otherwise. `limited`
        False: the key is checked but spends nothing of its --rate-limit (a metrics scrape)."""
        who = f"client:{client}"
        if self.keys:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise ApiError(401, "missing API key; send 'Authorization: Bearer YOUR_KEY'", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
            self._throttle(client)
            given = token.strip().encode()
            # Compare with every key, whatever matches, so timing says nothing about which or how much.
            matches = [hmac.compare_digest(given, k) for k in self.keys]
            if not any(matches):
                self._failed(client)
                raise ApiError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            who = f"key:{matches.index(True)}"
        if limited:
            self._limit(who)
        return who

    def _throttle(self, client: str) -> None:
        now = time.monotonic()
        with self.lock:
            recent = self.failures.get(client)
            while recent and recent[0] <= now - self.failure_window:
                recent.popleft()
            if recent is None or len(recent) < self.failure_limit:
                return
            wait = max(1, math.ceil(recent[0] + self.failure_window - now))
        raise ApiError(429, f"too many wrong API keys from this address ({self.failure_limit} in "
                       f"{self.failure_window:g} s); retry in {wait} s with the right key", code="auth_throttled",
                       headers={"Retry-After": str(wait)})

    def _failed(self, client: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.failures.setdefault(client, deque()).append(now)
            if len(self.failures) > _TRACKED_ADDRESSES:
                for address in [a for a, times in self.failures.items() if times[-1] <= now - self.failure_window]:
                    del self.failures[address]
                while len(self.failures) > _TRACKED_ADDRESSES:
                    del self.failures[next(iter(self.failures))]

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
        # /metrics spends no rate limit: Prometheus shares the applications' key and got 429 when the server was busy
        return state.auth.check(request.headers.get("authorization"), request.client.host if request.client else "?",
                                limited=request.url.path != "/metrics")
    except ApiError as err:
        state.metrics.rejected.labels("auth" if err.status == 401 or err.code == "auth_throttled" else "rate_limit").inc()
        raise


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit.

    A declared Content-Length is checked before anything is read (the HTTP server holds the client to
    it). A chunked body, which declares no length, is read here up to the limit and handed to the app
    whole: failing inside the app's own read would come back as FastAPI's 400 "error parsing the body".
    Whatever a refused client still sends is discarded by the server, so it gets to read the 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self._reject(send)
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body ended: the app sees that
                pending = [message]
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay():
            # The buffered body once, then the server's own messages (a disconnect, for cancellation).
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send):
        import json

        body = json.dumps(error_body(f"request body is larger than {self.max_bytes // 1024} KiB", "invalid_request_error",
                                     None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

