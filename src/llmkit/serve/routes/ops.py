"""Health (open, for load balancers) and Prometheus metrics (behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

import llmkit.serve.schemas as s
from llmkit.serve.auth import authorize
from llmkit.serve.state import server_state

router = APIRouter(tags=["ops"])


@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD too (one operation id per route)
@router.get("/health", response_model=s.Health)
async def health(request: Request):
    state = server_state(request)
    return s.Health(models=list(state.models), queue_depth=sum(e.depth() for e in state.engines().values()))


@router.get("/metrics", dependencies=[Depends(authorize)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **s.ERRORS})
async def metrics(request: Request):
    state = server_state(request)
    return Response(state.metrics.render(state.engines()), media_type="text/plain; version=0.0.4; charset=utf-8")
