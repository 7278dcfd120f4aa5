"""The HTTP API: OpenAI-compatible /v1 routes, ours for classify and feedback, health, metrics, the UI.

`create_app(cfg, models, registry, workspace)` builds the FastAPI app around loaded models; the
`llmkit serve` command and the tests both run it under uvicorn. Every route answers a client's
mistake with a 4xx in OpenAI's error shape (see errors.py), never a 500.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from llmkit.config import ServeConfig
from llmkit.generate import chat_prompt, encode_prompt
from llmkit.serve import schemas as s
from llmkit.serve.auth import Auth, BodyLimit
from llmkit.serve.errors import ApiError, install_handlers
from llmkit.serve.handling import bos_prompt, collect, make_job, stream, usage, usage_wanted
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.served import ServedModel, embed

log = logging.getLogger("llmkit.serve")
STATIC = Path(__file__).parent / "static"
ERRORS = {code: {"model": s.ErrorBody} for code in (400, 401, 404, 408, 413, 429)}
STREAMING = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}
RECENT = 10_000  # responses remembered for feedback without --log-requests


class ServerState:
    def __init__(self, cfg: ServeConfig, models: dict[str, ServedModel], registry, workspace, auth: Auth):
        self.cfg, self.models, self.registry, self.workspace, self.auth = cfg, models, registry, workspace, auth
        self.metrics = ServerMetrics()
        self.recent: OrderedDict[str, dict] = OrderedDict()

    def model(self, name: str, kind: str | None = None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            served = next((m for m in self.models.values() if name in (m.model.ref, str(m.model.path))), None)
        if served is None:
            raise ApiError(404, f"model '{name}' is not served here; models: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if kind and served.kind != kind:
            what = {"causal": "a causal language model", "classifier": "a classifier",
                    "encoder": "an encoder or classifier"}[kind]
            fits = [m.id for m in self.models.values() if m.kind == kind or (kind == "encoder" and m.kind == "classifier")]
            if not (kind == "encoder" and served.kind == "classifier"):
                raise ApiError(400, f"model '{name}' is a {served.kind}, and this route needs {what}"
                               + (f"; try {', '.join(fits)}" if fits else ""), param="model", code="wrong_model_kind")
        return served

    def remember(self, rid: str, entry: dict) -> None:
        self.recent[rid] = entry
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    def engines(self) -> dict:
        return {m.id: m.engine for m in self.models.values() if m.engine}


def create_app(cfg: ServeConfig, models: dict[str, ServedModel], registry, workspace) -> FastAPI:
    from llmkit.serve.auth import read_keys

    auth = Auth(read_keys(cfg.api_keys, cfg.api_keys_file), cfg.rate_limit)
    state = ServerState(cfg, models, registry, workspace, auth)
    app = FastAPI(title="llmkit", version="1", summary="OpenAI-compatible API of llmkit models",
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.llmkit = state
    app.state.registry, app.state.workspace = registry, workspace
    install_handlers(app)
    for served in models.values():
        if served.engine:
            served.engine.on_step = state.metrics.batch.labels(served.id).observe
            served.engine.on_cancel = state.metrics.cancelled.labels(served.id).inc

    async def authorize(request: Request) -> str:
        try:
            return auth.check(request.headers.get("authorization"), request.client.host if request.client else "?")
        except ApiError as err:
            state.metrics.rejected.labels("auth" if err.status == 401 else "rate_limit").inc()
            raise

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        state.metrics.requests.labels(path, str(response.status_code)).inc()
        state.metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.get("/health", response_model=s.Health, tags=["ops"])
    async def health():
        return s.Health(models=list(models), queue_depth=sum(e.depth() for e in state.engines().values()))

    @app.get("/metrics", tags=["ops"], dependencies=[Depends(authorize)],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **ERRORS})
    async def metrics():
        return Response(state.metrics.render(state.engines()), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=s.ModelList, dependencies=[Depends(authorize)], responses=ERRORS)
    async def list_models():
        return s.ModelList(data=[s.ModelCard(id=m.id, created=m.created, kind=m.kind, backend=m.backend,
                                             context_length=m.max_len) for m in models.values()])

    @app.get("/v1/models/{model_id}", response_model=s.ModelCard, dependencies=[Depends(authorize)], responses=ERRORS)
    async def get_model(model_id: str):
        m = state.model(model_id)
        return s.ModelCard(id=m.id, created=m.created, kind=m.kind, backend=m.backend, context_length=m.max_len)

    @app.post("/v1/completions", response_model=s.Completion, dependencies=[Depends(authorize)],
              responses={**ERRORS, **STREAMING})
    async def completions(body: s.CompletionRequest, request: Request):
        served = state.model(body.model, "causal")
        ids = encode_prompt(served.tokenizer, body.prompt) if body.prompt else bos_prompt(served)
        job = make_job(state, served, ids, body, body.max_tokens, [])
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "completion", "prompt": body.prompt}
        head = body.prompt if body.echo else ""
        if body.stream:
            def chunk(text, finish, usage=None):
                return s.Completion(id=rid, created=created, model=served.id, usage=usage,
                                    choices=[s.CompletionChoice(text=text, finish_reason=finish)] if usage is None or text else [])
            return stream(state, served, job, request, rid, entry, chunk, first=head, include_usage=usage_wanted(body))
        text, done = await collect(state, served, job, request, rid, entry)
        return s.Completion(id=rid, created=created, model=served.id, usage=usage(done),
                            choices=[s.CompletionChoice(text=head + text, finish_reason=done.finish_reason)])

    @app.post("/v1/chat/completions", response_model=s.ChatCompletion, dependencies=[Depends(authorize)],
              responses={**ERRORS, **STREAMING})
    async def chat_completions(body: s.ChatRequest, request: Request):
        served = state.model(body.model, "causal")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in body.messages]
        try:
            prompt, end_ids = chat_prompt(served.tokenizer, messages)
        except Exception as err:  # a template that rejects the roles or their order (jinja raises)
            raise ApiError(400, f"the model's chat template rejected the messages: {err}", param="messages") from None
        job = make_job(state, served, encode_prompt(served.tokenizer, prompt), body,
                   body.max_completion_tokens or body.max_tokens, end_ids)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "chat",
                 "prompt": json.dumps(messages, ensure_ascii=False)}
        if body.stream:
            def chunk(text, finish, usage=None, role=False):
                choices = [] if usage is not None else [
                    {"index": 0, "delta": ({"role": "assistant", "content": text} if role else {"content": text} if text else {}),
                     "finish_reason": finish, "logprobs": None}]
                out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.id, "choices": choices}
                if usage is not None:
                    out["usage"] = usage.model_dump()
                return out
            return stream(state, served, job, request, rid, entry, chunk, first="", role=True,
                        include_usage=usage_wanted(body))
        text, done = await collect(state, served, job, request, rid, entry)
        return s.ChatCompletion(id=rid, created=created, model=served.id, usage=usage(done),
                                choices=[s.ChatChoice(message=s.ChatMessageOut(content=text), finish_reason=done.finish_reason)])

    @app.post("/v1/embeddings", response_model=s.EmbeddingList, dependencies=[Depends(authorize)], responses=ERRORS)
    async def embeddings(body: s.EmbeddingRequest):
        served = state.model(body.model, "encoder")
        vectors, tokens = await run_in_threadpool(embed, served, body.input)
        if body.encoding_format == "base64":
            import base64

            import numpy as np

            vectors = [base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode() for v in vectors]
        return s.EmbeddingList(model=served.id, data=[s.Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
                               usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens))

    @app.post("/v1/classify", response_model=s.ClassificationList, dependencies=[Depends(authorize)], responses=ERRORS)
    async def classify(body: s.ClassifyRequest):
        from llmkit.predict import classify_texts

        served = state.model(body.model, "classifier")

        def run():
            with served.lock:
                return classify_texts(served.net, served.tokenizer, served.labels, body.input, served.max_length)

        results = await run_in_threadpool(run)
        tokens = sum(len(ids) for ids in served.tokenizer(body.input, truncation=True, max_length=served.max_length)["input_ids"])
        return s.ClassificationList(model=served.id, usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
                                    data=[s.Classification(index=i, label=r["label"], probabilities=r["probabilities"])
                                          for i, r in enumerate(results)])

    @app.post("/v1/explain", response_model=s.ExplainResult, dependencies=[Depends(authorize)], responses=ERRORS)
    async def explain(body: s.ExplainRequest):
        from llmkit.config import ExplainConfig
        from llmkit.errors import UserError
        from llmkit.explain import explain_loaded

        served = state.model(body.model)
        if served.net is None or served.kind == "encoder":
            raise ApiError(400, f"model '{served.id}' cannot be explained here: explanations need a classifier or a causal "
                           f"LM on the torch backend (it is a {served.kind} on {served.backend})", param="model",
                           code="wrong_model_kind")
        cfg = ExplainConfig(method=body.method, target=body.target, completion=body.completion, steps=body.steps)

        def run():
            with served.lock:  # gradients through the shared module: one explanation at a time per model
                return explain_loaded(served.net, served.tokenizer, served.kind, body.input, cfg, labels=served.labels,
                                      max_length=served.max_length, name=served.id)

        try:
            result = await run_in_threadpool(run)
        except UserError as err:
            raise ApiError(400, str(err), param="target" if "label" in str(err) or "target" in str(err) else None) from None
        return s.ExplainResult(**{**result.to_dict(), "model": served.id})

    @app.post("/v1/feedback", response_model=s.FeedbackAck, dependencies=[Depends(authorize)], responses=ERRORS)
    async def feedback(body: s.FeedbackRequest):
        if body.rating is None and body.correction is None and body.comment is None:
            raise ApiError(400, "send a rating (1 or -1), a correction or a comment", param="rating")
        entry = state.recent.get(body.response_id)
        if entry is None:
            entry = await run_in_threadpool(_logged, registry, body.response_id)
        if entry is None:
            raise ApiError(404, f"unknown response_id '{body.response_id}': not one of this server's recent responses",
                           param="response_id", code="response_not_found")
        fid = await run_in_threadpool(
            registry.add_feedback, entry["model"], response_id=body.response_id, rating=body.rating,
            prompt=entry.get("prompt"), response=entry.get("response"), correction=body.correction,
            extra={"kind": "feedback", "endpoint": entry.get("endpoint"), "comment": body.comment,
                   "model_ref": entry.get("model_ref")})
        return s.FeedbackAck(id=fid, response_id=body.response_id)

    try:
        from llmkit.serve.dashboard import router as dashboard

        app.include_router(dashboard, dependencies=[Depends(authorize)], responses=ERRORS)
    except ImportError:  # the dashboard is optional while it is being built
        pass
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if cfg.ui and STATIC.is_dir():
        from fastapi.responses import RedirectResponse
        from fastapi.staticfiles import StaticFiles

        # Under /ui rather than /: a mount at / would answer every unmatched path (GET on a POST
        # route included) with its own 404 instead of the API's 405.
        app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def root():
            return RedirectResponse("/ui/")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_kb * 1024)
    return app


def _logged(registry, response_id: str) -> dict | None:
    for row in reversed(registry.list_feedback()):
        if row["response_id"] == response_id and row["extra"].get("kind") == "request":
            return {"model": row["model"], "endpoint": row["extra"].get("endpoint"), "prompt": row["prompt"],
                    "response": row["response"], "model_ref": row["extra"].get("model_ref")}
    return None

