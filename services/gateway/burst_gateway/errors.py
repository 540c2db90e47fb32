"""Turning errors into ``{"error": {"type", "message"}}`` answers with the status table of
:mod:`burst.exception`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from burst.exception import (
    Error,
    InternalError,
    InvalidError,
    UnavailableError,
    status_of,
    type_of_status,
)
from burst_core import logs
from burst_gateway import unavailable

log = logs.get("burst.gateway")

#: Said when a body (JSON or msgpack) is nested deeper than its parser goes (Python's
#: recursion limit).
TOO_DEEP = ("the request body is nested too deeply (arrays and objects within each other, "
            "a few hundred levels at most)")


class JSON(JSONResponse):
    """A JSON answer that any Python string can travel in: a lone surrogate (undecodable
    bytes, as ``os.fsdecode`` makes them; or ``"\\ud800"`` sent in a request) cannot be
    written as UTF-8, so such an answer has its non-ASCII characters escaped instead."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def error_response(type_: str, message: str) -> JSONResponse:
    return JSON({"error": {"type": type_, "message": message}}, status_code=status_of(type_))


def unavailable_response(retry_after: float) -> JSONResponse:
    """503 ``Unavailable`` with ``Retry-After``: NATS is out of reach (see unavailable.py)."""
    return JSONResponse({"error": {"type": UnavailableError.type,
                                   "message": unavailable.MESSAGE}},
                        status_code=status_of(UnavailableError.type),
                        headers={"Retry-After": unavailable.retry_after_value(retry_after)})


def install(app: FastAPI, retry_after: float = 1.0) -> None:
    async def _nats_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("nats_unreachable", error=repr(exc))
        return unavailable_response(retry_after)

    for cls in unavailable.NATS_DOWN:
        app.add_exception_handler(cls, _nats_down)

    @app.exception_handler(Error)
    async def _burst_error(_: Request, exc: Error) -> JSONResponse:
        return error_response(exc.type, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(InvalidError.type, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = type_of_status(exc.status_code)
        message = str(exc.detail)
        if isinstance(exc.__cause__, RecursionError):  # FastAPI reading a JSON body
            message = TOO_DEEP
        return JSON({"error": {"type": type_, "message": message}}, status_code=exc.status_code)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Nothing in the gateway recurses but the parsers of what a request sends: routes
        # that read their body themselves say so, this answers for any that does not.
        log.warning("request_too_deep", path=request.url.path, error=repr(exc))
        return error_response(InvalidError.type, TOO_DEEP)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path, error=repr(exc))
        return error_response(InternalError.type, "internal error; see the gateway log")
