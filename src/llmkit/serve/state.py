"""What a running server holds: its config, the served models, registry, workspace, auth, metrics and
the recent responses feedback can refer to. One instance per app, at `app.state.llmkit`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from llmkit.config import ServeConfig
from llmkit.serve.auth import Auth
from llmkit.serve.errors import ApiError
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.served import ServedModel

RECENT = 10_000  # responses remembered for feedback without --log-requests


class ServerState:
    def __init__(self, cfg: ServeConfig, models: dict[str, ServedModel], registry, workspace, auth: Auth):
        self.cfg, self.models, self.registry, self.workspace, self.auth = cfg, models, registry, workspace, auth
        self.metrics = ServerMetrics()
        self.admin: Auth = Auth([])  # the keys of the routes that change what is served (create_app sets them)
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.explaining = 0  # explanations running or waiting for their model (touched on the event loop only)
        self.draining = False  # stopping: new requests get 503, those in flight finish (serve._drain)
        self.in_flight = 0  # HTTP requests inside their handler (a stream's tokens are its engine's, see busy())
        self.log_failing = False  # the last --log-requests write failed (its warning is said once per outage)

    def model(self, name: str, kind: str | None = None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            served = next((m for m in self.models.values() if name in (m.model.ref, str(m.model.path))), None)
        if served is None:
            raise ApiError(404, f"model '{name}' is not served here; models: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if kind and served.kind != kind:
            names = {"causal": "a causal language model", "classifier": "a classifier", "encoder": "an encoder"}
            what = "an encoder or a classifier" if kind == "encoder" else names[kind]
            fits = [m.id for m in self.models.values() if m.kind == kind or (kind == "encoder" and m.kind == "classifier")]
            if not (kind == "encoder" and served.kind == "classifier"):
                raise ApiError(400, f"model '{name}' is {names.get(served.kind, served.kind)}, and this route needs {what}"
                               + (f"; try {', '.join(fits)}" if fits else ""), param="model", code="wrong_model_kind")
        return served

    def busy(self) -> int:
        """Requests not yet answered: in a handler, or queued or decoding in an engine (a streamed answer's
        handler returns at its first byte; its engine holds it until the last token)."""
        return self.in_flight + sum(e.running + e.depth() for e in self.engines().values())

    def remember(self, rid: str, entry: dict) -> None:
        self.recent[rid] = entry
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    @contextmanager
    def explain_slot(self) -> Iterator[None]:
        """A place among the explanations this server runs or holds at once (cfg.explain_queue); 429 when none is free."""
        if self.explaining >= self.cfg.explain_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, f"the server is busy: {self.cfg.explain_queue} explanations are running or queued; "
                           "retry shortly", code="queue_full", headers={"Retry-After": "1"})
        self.explaining += 1
        try:
            yield
        finally:
            self.explaining -= 1

    def engines(self) -> dict:
        return {m.id: m.engine for m in self.models.values() if m.engine and not m.parent}


def server_state(request) -> ServerState:
    """The state of the app a request came to (routers are module-level; each app carries its own)."""
    return request.app.state.llmkit
