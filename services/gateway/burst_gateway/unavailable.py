"""503 with ``Retry-After`` while NATS is out of reach.

Every endpoint but the health check needs NATS (the durable truth): while the gateway's
connection is down (nats-server restarting, a network cut), waiting for a request's first
NATS operation to time out would answer 500 after seconds. :class:`NatsGuard`, in front
of everything else, answers such requests at once with 503 ``Unavailable`` and a
``Retry-After``; a request already under way when the connection drops gets the same
answer from the error handlers (:data:`NATS_DOWN`), not a 500.
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
import nats.js.errors
from starlette.types import ASGIApp, Receive, Scope, Send

from burst.exception import UnavailableError

#: NATS errors that mean "not reachable right now": retry later, the request did nothing
#: that a retry could double (calls are deduplicated by id).
NATS_DOWN: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)

MESSAGE = "the cluster's message bus (NATS) is unreachable right now; retry shortly"

#: Paths answered whatever the state of NATS: liveness and the API's documentation.
EXEMPT = frozenset({"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})


def body(message: str = MESSAGE) -> bytes:
    return json.dumps({"error": {"type": UnavailableError.type, "message": message}}).encode()


def retry_after_value(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: at least 1."""
    return str(max(1, round(seconds)))


def headers(retry_after: float) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"),
            (b"retry-after", retry_after_value(retry_after).encode())]


async def answer(send: Send, retry_after: float, message: str = MESSAGE) -> None:
    data = body(message)
    await send({"type": "http.response.start", "status": 503,
                "headers": [*headers(retry_after),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class NatsGuard:
    """ASGI: 503 + ``Retry-After`` for every request (but :data:`EXEMPT`) while the
    gateway (``app.state.gw``, once started) is not connected to NATS; other requests go
    on to ``inner`` (the fast path in front of the FastAPI application ``app``)."""

    def __init__(self, app: Any, inner: ASGIApp, retry_after: float) -> None:
        self.app = app  # the FastAPI application: its lifespan and state
        self.state = app.state
        self.inner = inner
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in EXEMPT:
            gw = getattr(self.state, "gw", None)
            nc = getattr(gw, "nc", None)
            if nc is not None and not nc.is_connected:
                return await answer(send, self.retry_after)
        await self.inner(scope, receive, send)
