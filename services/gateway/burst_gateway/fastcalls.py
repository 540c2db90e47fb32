"""The SDK's call request without FastAPI's layers.

``POST /v1/apps/{app}/functions/{fn}/calls`` with a msgpack body, a msgpack answer and no
``Idempotency-Key`` is what every ``f.remote()`` sends. Routing it through FastAPI (route
matching over every route, dependency solving, the response classes) cost about a quarter
of the gateway's CPU per warm call. This ASGI middleware answers that one form directly:
the same token check, body limit, decoding, call (:meth:`burst_core.calls.caller.Caller.call_once`)
and errors (:func:`burst_gateway.errors.error_response`) as the route, and it sits in front
of FastAPI's own middleware (:func:`burst_gateway.app.asgi_app`). Every other request,
including that route in its JSON form, with an ``Idempotency-Key`` or with a query string
other than ``wait=<seconds>``, goes on to FastAPI, which also documents the route.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from burst.exception import Error, InternalError, InvalidError, PermissionDeniedError
from burst.wire import MSGPACK
from burst_core import logs
from burst_gateway import scopes
from burst_gateway.api_calls import _call_decoder, decode_body
from burst_gateway.auth import OPERATOR, covers, denied, principal_of
from burst_gateway.errors import error_response, unavailable_response
from burst_gateway.state import Gateway
from burst_gateway.unavailable import NATS_DOWN
from burst_gateway.validate import check_name

log = logs.get("burst.gateway")

#: The scope the route needs (scopes.py), checked here the same.
_CALL_SCOPE = scopes.needed("POST", "/v1/apps/{app}/functions/{fn}/calls") or OPERATOR
_PATH = re.compile(r"/v1/apps/([^/]+)/functions/([^/]+)/calls")
_QUERY = re.compile(rb"(?:wait=([0-9]{1,9}(?:\.[0-9]{0,9})?))?")
_MSGPACK = MSGPACK.encode()
#: Requests this path answered (tests tell it from the route by this).
served = 0


class FastCalls:
    """The fast path in front of the gateway's FastAPI application ``app`` (whose
    ``state.gw`` it calls with)."""

    def __init__(self, app: Any) -> None:
        self.app: ASGIApp = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = _PATH.fullmatch(scope["path"])
        query = _QUERY.fullmatch(scope["query_string"])
        if path is None or query is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if (headers.get(b"content-type") != _MSGPACK or _MSGPACK not in headers.get(b"accept", b"")
                or b"idempotency-key" in headers):
            return await self.app(scope, receive, send)
        global served
        served += 1
        try:
            status, body = await self._call(scope, receive, headers, path.group(1),
                                            path.group(2), float(query.group(1) or 0))
        except Error as e:
            return await error_response(e.type, str(e))(scope, receive, send)
        except NATS_DOWN as e:
            log.warning("nats_unreachable", error=repr(e))
            return await unavailable_response(
                self.state.gw.settings.unavailable_retry_after)(scope, receive, send)
        except Exception as e:
            log.exception("unhandled_error", path=scope["path"], error=repr(e))
            return await error_response(InternalError.type, "internal error; see the gateway log")(
                scope, receive, send)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", _MSGPACK),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _call(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes],
                    app: str, fn: str, wait: float) -> tuple[int, bytes]:
        gw: Gateway = self.state.gw  # set by the application's lifespan (app.create_app)
        check_name("app", app)  # as every route checks its names (burst_gateway.validate)
        check_name("function", fn)
        p = await principal_of(gw.tokens, headers.get(b"authorization", b"").decode("latin-1"))
        if not covers(p.scope, _CALL_SCOPE):
            raise PermissionDeniedError(denied("POST", scope["path"], _CALL_SCOPE, p))
        dep = await gw.caller.function(p.workspace, app, fn)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                raise InvalidError("the request body was not received")
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        req = decode_body(gw, b"".join(chunks), _call_decoder, "call request")
        resp, _ = await gw.caller.call_once(p.workspace, dep, fn, req.payload, "pickle",
                                            req.payload_ref, wait,
                                            submission=req.submission_id)
        return (200 if resp.status != "pending" else 202), msgspec.msgpack.encode(resp)
