"""Requests longer than the per-request limit: Modal's 303 instead of a dropped connection.

A request whose response has not started within ``web_request_timeout`` (150 s, as
Modal's) is answered ``303 See Other`` with ``Location: /__burst/requests/{id}``: the
request goes on in the container (the client leaving now cancels nothing), its response
is kept here, and a ``GET`` of that location waits up to ``web_request_timeout`` for it,
answering it, or ``303`` to itself again. A response that started streaming is never
redirected. The id is the request's own random id (the location is the capability); a
result is kept ``web_request_timeout`` after it is complete, once fetched it is gone.
One gateway holds the result: behind several gateways the location must reach the same
one (sticky routing).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from starlette.types import Send

#: Where a redirected request's result is fetched (never a workspace's path: a workspace
#: name does not start with '_').
PREFIX = "/__burst/requests/"


@dataclass
class Detached:
    """The response of a redirected request, as it comes."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    #: The gateway's own answer (status, type, message) when the request failed.
    error: tuple[int, str, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Redirected(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Detachments:
    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.items: dict[str, Detached] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, req_id: str) -> tuple[Detached, str]:
        d = self.items[req_id] = Detached()
        return d, PREFIX + req_id

    def keep(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def finished(self, req_id: str) -> None:
        """The response is complete: kept ``wait`` seconds for its client to fetch it."""
        asyncio.get_running_loop().call_later(self.wait, self.items.pop, req_id, None)

    async def answer(self, path: str, send: Send) -> None:
        """A GET of a redirect location: the response once complete, else 303 again."""
        req_id = path[len(PREFIX):]
        d = self.items.get(req_id)
        if d is None:
            await _json(send, 404, "NotFound", f"no pending request {req_id!r} (its result "
                        "was fetched already, or kept past its time)")
            return
        try:
            await asyncio.wait_for(d.done.wait(), self.wait)
        except TimeoutError:
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", path.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        self.items.pop(req_id, None)
        if d.error is not None:
            await _json(send, *d.error)
            return
        await send({"type": "http.response.start", "status": d.status, "headers": d.headers})
        await send({"type": "http.response.body", "body": bytes(d.body)})


async def redirect(send: Send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _json(send: Send, status: int, type_: str, message: str) -> None:
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
