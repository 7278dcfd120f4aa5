"""LoRA adapters on served bases, at run time: list them, load one (`POST /v1/adapters`), unload one
(`DELETE /v1/adapters/{name}`). Loading and unloading change what the server runs, so they need an admin key
(`--admin-key`); a server started without one keeps the adapters it started with."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

import llmkit.serve.schemas as s
from llmkit.errors import UserError
from llmkit.serve.adapters import attach, detach
from llmkit.serve.auth import authorize
from llmkit.serve.errors import ApiError
from llmkit.serve.state import server_state

router = APIRouter(prefix="/v1", responses={**s.ERRORS, 403: {"model": s.ErrorBody}, 409: {"model": s.ErrorBody}})


class AdapterRequest(s.Request):
    adapter: s.Text = Field(..., min_length=1, max_length=4096, description="a LoRA adapter: registry name or folder")
    name: s.Text | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$",
                                description="the model id clients will send (default: the adapter's name)")


class AdapterCard(BaseModel):
    id: str
    object: str = "adapter"
    parent: str
    source: str


class AdapterList(BaseModel):
    object: str = "list"
    data: list[AdapterCard]


async def authorize_admin(request: Request) -> str:
    state = server_state(request)
    if state.admin.open:
        raise ApiError(403, "adapters are fixed on this server: start it with --admin-key KEY to load and unload them "
                       "at run time", type="permission_error", code="admin_disabled")
    try:
        return state.admin.check(request.headers.get("authorization"), request.client.host if request.client else "?")
    except ApiError as err:
        state.metrics.rejected.labels("auth").inc()
        raise ApiError(err.status, err.message.replace("API key", "admin key"), code=err.code, headers=err.headers) \
            from None


def _card(served) -> AdapterCard:
    return AdapterCard(id=served.id, parent=served.parent, source=served.model.ref)


@router.get("/adapters", response_model=AdapterList, dependencies=[Depends(authorize)])
async def list_adapters(request: Request):
    return AdapterList(data=[_card(m) for m in server_state(request).models.values() if m.parent])


@router.post("/adapters", response_model=AdapterCard, dependencies=[Depends(authorize_admin)])
async def load_adapter(body: AdapterRequest, request: Request):
    state = server_state(request)
    try:
        served = await run_in_threadpool(attach, body.name, body.adapter, state.models, state.registry)
    except UserError as err:
        raise ApiError(400, str(err), param="adapter", code="invalid_adapter") from None
    if served.id in state.models:  # another request loaded the same name meanwhile
        raise ApiError(400, f"a model named '{served.id}' is already served; send another name", param="name")
    state.models[served.id] = served
    return _card(served)


@router.delete("/adapters/{name}", response_model=AdapterCard, dependencies=[Depends(authorize_admin)])
async def unload_adapter(name: str, request: Request):
    state = server_state(request)
    served = state.models.get(name)
    if served is None or not served.parent:
        known = ", ".join(m.id for m in state.models.values() if m.parent) or "none"
        raise ApiError(404, f"no adapter named '{name}' is served (adapters: {known})", param="name",
                       code="adapter_not_found")
    del state.models[name]  # new requests for it get 404 from here on
    try:
        detach(served, state.models)
    except UserError as err:
        state.models[name] = served
        raise ApiError(409, str(err), code="adapter_busy", headers={"Retry-After": "1"}) from None
    return _card(served)
