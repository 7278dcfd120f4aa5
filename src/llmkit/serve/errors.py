"""OpenAI-shaped errors: every 4xx/5xx body is {"error": {"message", "type", "param", "code"}}.

Clients written against OpenAI (the `openai` package, LangChain, curl scripts) read `error.message`
and branch on `type`/`code`, so the server answers in that shape whatever went wrong: a bad field,
malformed JSON, an unknown route, a full queue.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit.registry import RegistryUnavailable

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 409: "invalid_request_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
         415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                        headers=err.headers)


# Parts of a pydantic error location that name a branch of a union type, not a field.
_BRANCH = re.compile(r"^(str|int|float|bool|list|dict|none|literal\[.*|function-\w+\[.*|.*\[.*\])$")


def _field(loc: tuple) -> str:
    # ("body", "messages", 0, "content") -> "messages[0].content"; ("body", "stop", "list[str]") -> "stop"
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header") or (isinstance(part, str) and _BRANCH.match(part)):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# What a body that is valid JSON but not an object is, in the words of the error.
_JSON_KINDS = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean", int: "a JSON number",
               float: "a JSON number", type(None): "JSON null"}


def _not_an_object(value, content_type: str | None) -> str:
    """The body as a whole is not a JSON object: sent as form data, text or with no Content-Type (FastAPI reads JSON
    only when the Content-Type says so, which keeps a web page's plain form posts out; `curl -d` without -H sends a
    form), or JSON of another kind."""
    if isinstance(value, bytes | bytearray):
        sent = f"as Content-Type '{content_type.split(';')[0].strip()}', which is not JSON" if content_type else \
            "without a Content-Type"
        return (f"the request body was sent {sent}; send a JSON object with the header 'Content-Type: "
                "application/json' (curl: -H 'Content-Type: application/json')")
    kind = _JSON_KINDS.get(type(value), "not a JSON object")
    return f"the request body is {kind}, not a JSON object; send a JSON object such as {{\"model\": ...}}"


def _validation_message(exc: RequestValidationError, content_type: str | None = None) -> tuple[str, str | None]:
    # For a union, pydantic reports every branch; a "wrong type" error of the branch the value is not
    # meant for says less than the other branch's (e.g. "at most 4 items" over "not a string").
    errors = sorted(exc.errors(), key=lambda e: str(e.get("type", "")).endswith("_type"))
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({ctx}); send a JSON object", None
    if first.get("type") == "unknown_field":  # a near miss of a known field (request_base._refuse_near_misses)
        return first["msg"], first["ctx"]["field"]
    if loc == ("body",) and first.get("type") == "model_attributes_type":
        return _not_an_object(first.get("input"), content_type), None
    field = _field(loc)
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")  # our validators' own words
    if first.get("type") == "missing":
        return (f"'{field}' is required", field) if field else ("the request body is empty; send a JSON object", None)
    if field:
        return f"'{field}': {msg}", field
    return f"the request body is invalid: {msg}", None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc, request.headers.get("content-type"))
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = None
        if status == 404:
            message = "no such route; the API is under /v1 (see /docs)"
        elif status == 405:  # Starlette's words were "Method Not Allowed", with the methods only in a header
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'} (see /docs)"
            code = "method_not_allowed"
        elif status == 400 and message == "There was an error parsing the body":  # FastAPI's words for any such failure
            message, code = ("the request body could not be read as JSON: it must be UTF-8 and nested at most a few "
                             "hundred levels deep; send a JSON object"), "invalid_value"
        return JSONResponse(error_body(message, TYPES.get(status, "invalid_request_error"), None, code),
                            status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(RegistryUnavailable)
    async def _registry_down(_: Request, exc: Exception):
        # The registry's database (feedback, the dashboard) down or refusing: the server's fault or its
        # operator's, not the client's, and not a crash with a traceback in the log.
        import logging

        reason = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        logging.getLogger("llmkit.serve").warning("the registry refused a request: %s", reason)
        return JSONResponse(error_body("the registry (the server's database) is unavailable; retry shortly",
                                       "server_error", None, "registry_unavailable"), status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception):
        # Only our own bugs land here; say so without leaking a traceback to the client.
        import logging

        logging.getLogger("llmkit.serve").exception("internal error")
        return JSONResponse(error_body(f"internal server error ({type(exc).__name__})", "server_error"), status_code=500)
