"""Health (open, for load balancers) and Prometheus metrics (behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

import llmkit.serve.schemas as s
from llmkit.serve.auth import authorize
from llmkit.serve.state import server_state

router = APIRouter(tags=["ops"])


@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD too (one operation id per route)
@router.get("/health", response_model=s.Health, responses={503: {"model": s.Health, "description": "draining: stopping"}})
async def health(request: Request):
    state = server_state(request)
    health = s.Health(models=list(state.models), queue_depth=sum(e.depth() for e in state.engines().values()))
    if state.draining:  # a load balancer stops sending here while the requests in flight finish
        return JSONResponse(s.Health(**{**health.model_dump(), "status": "draining"}).model_dump(), status_code=503)
    return health


@router.get("/metrics", dependencies=[Depends(authorize)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **s.ERRORS})
async def metrics(request: Request):
    state = server_state(request)
    return Response(state.metrics.render(state.engines()), media_type="text/plain; version=0.0.4; charset=utf-8")
