"""Requests longer than the per-request limit: Modal's 303 instead of a dropped connection.

A request whose response has not started within ``web_request_timeout`` (150 s, as
Modal's) is answered ``303 See Other`` with ``Location:
/__burst/requests/{gateway}/{id}``: the request goes on in the container (the client
leaving now cancels nothing), its response is kept by the gateway that took it
(``gateway``, a random id of that gateway process), and a ``GET`` of that location waits
up to ``web_request_timeout`` for it, answering it, or ``303`` to itself again. A response
that started streaming is never redirected. The id is the request's own random id (the
location is the capability); a result is kept ``web_request_timeout`` after it is
complete, once fetched it is gone.

Any gateway answers the location: one that does not hold the result asks the one that
does over core NATS (``names.web_result_subject(gateway)``), which answers with the
response's head once it is complete (or "still running": 303 again) after sending its
body in chunks to an inbox of the asking gateway. A gateway that is gone took its
results with it: 404 saying so.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from starlette.types import Send

from burst_core import logs, names

log = logs.get("burst.gateway.web")

#: Where a redirected request's result is fetched (never a workspace's path: a workspace
#: name does not start with '_').
PREFIX = "/__burst/requests/"
#: Body bytes per message when a result travels to another gateway.
CHUNK = 256 << 10


@dataclass
class Detached:
    """The response of a redirected request, as it comes."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    #: The gateway's own answer (status, type, message) when the request failed.
    error: tuple[int, str, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Ask(msgspec.Struct, kw_only=True):
    """To the gateway holding a result: send it (its body to ``inbox``) once complete."""

    req_id: str
    inbox: str


class _Told(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The holder's answer: ``state`` is "done" (head here, ``chunks`` body messages sent
    before), "running" (not complete yet: 303 again), "missing" or "failed" (``error``)."""

    state: str
    status: int = 0
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)
    chunks: int = 0
    error: tuple[int, str, str] | None = None


class Redirected(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Detachments:
    def __init__(self, wait: float, answer_timeout: float) -> None:
        self.wait = wait
        #: Beyond ``wait``: how long a gateway asking for a result waits for its holder.
        self.answer_timeout = answer_timeout
        #: This gateway's part of the locations it gives out.
        self.gateway = uuid.uuid4().hex[:16]
        self.items: dict[str, Detached] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self._nc: Any = None
        self._lock = asyncio.Lock()

    async def listen(self, nc: Any) -> None:
        """Answer other gateways asking for this one's results (before the first 303)."""
        async with self._lock:
            if self._sub is None:
                self._nc = nc
                self._sub = await nc.subscribe(names.web_result_subject(self.gateway),
                                               cb=self._on_ask)

    def add(self, req_id: str) -> tuple[Detached, str]:
        d = self.items[req_id] = Detached()
        return d, f"{PREFIX}{self.gateway}/{req_id}"

    def keep(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def finished(self, req_id: str) -> None:
        """The response is complete: kept ``wait`` seconds for its client to fetch it."""
        asyncio.get_running_loop().call_later(self.wait, self.items.pop, req_id, None)

    async def _wait_for(self, req_id: str) -> Detached | str:
        """The complete result (taken: fetched once), else "missing" when there is none
        or "running" when it is still running after ``wait``."""
        d = self.items.get(req_id)
        if d is None:
            return "missing"
        try:
            await asyncio.wait_for(d.done.wait(), self.wait)
        except TimeoutError:
            return "running"
        self.items.pop(req_id, None)
        return d

    async def answer(self, path: str, send: Send, nc: Any) -> None:
        """A GET of a redirect location: the response once complete, else 303 again."""
        gateway, _, req_id = path[len(PREFIX):].partition("/")
        # (Both go into NATS subjects or lookups: letters, digits and '-' only.)
        if not _token(gateway) or not _token(req_id):
            await _json(send, 404, "NotFound", f"no pending request at {path!r}")
            return
        if gateway != self.gateway:
            await self._answer_remote(gateway, req_id, path, send, nc)
            return
        d = await self._wait_for(req_id)
        if d == "missing":
            await _json(send, 404, "NotFound", f"no pending request {req_id!r} (its result "
                        "was fetched already, or kept past its time)")
        elif not isinstance(d, Detached):
            await redirect(send, path)
        elif d.error is not None:
            await _json(send, *d.error)
        else:
            await send({"type": "http.response.start", "status": d.status,
                        "headers": d.headers})
            await send({"type": "http.response.body", "body": bytes(d.body)})

    # ---- between gateways ------------------------------------------------------------
    async def _on_ask(self, msg: Any) -> None:
        # Each in a task of its own: an answer may wait up to ``wait``.
        self.keep(asyncio.create_task(self._answer_ask(msg)))

    async def _answer_ask(self, msg: Any) -> None:
        try:
            ask = msgspec.msgpack.decode(msg.data, type=_Ask)
        except msgspec.DecodeError:
            return
        d = await self._wait_for(ask.req_id)
        if not isinstance(d, Detached):
            told = _Told(state=d)
        elif d.error is not None:
            told = _Told(state="failed", error=d.error)
        else:
            body = bytes(d.body)
            chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]
            for chunk in chunks:  # before the head: the asker reads them after it
                await self._nc.publish(ask.inbox, chunk)
            told = _Told(state="done", status=d.status, headers=d.headers,
                         chunks=len(chunks))
        try:
            await msg.respond(msgspec.msgpack.encode(told))
        except Exception as e:  # the asker is gone: the result with it
            log.warning("web_result_answer_failed", req_id=ask.req_id, error=repr(e))

    async def _answer_remote(self, gateway: str, req_id: str, path: str, send: Send,
                             nc: Any) -> None:
        if nc is None:
            await _json(send, 503, "Unavailable", "the gateway is not connected to the "
                        "cluster")
            return
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            try:
                reply = await nc.request(
                    names.web_result_subject(gateway),
                    msgspec.msgpack.encode(_Ask(req_id=req_id, inbox=inbox)),
                    timeout=self.wait + self.answer_timeout)
                told = msgspec.msgpack.decode(reply.data, type=_Told)
            except nats.errors.NoRespondersError:
                await _json(send, 404, "NotFound", f"no pending request {req_id!r}: the "
                            "gateway that took it is gone, and its result with it")
                return
            except (nats.errors.TimeoutError, TimeoutError):
                await _json(send, 502, "BadGateway", "the gateway holding the request's "
                            "result did not answer")
                return
            if told.state == "running":
                await redirect(send, path)
                return
            if told.state == "missing":
                await _json(send, 404, "NotFound", f"no pending request {req_id!r} (its "
                            "result was fetched already, or kept past its time)")
                return
            if told.state == "failed" and told.error is not None:
                await _json(send, *told.error)
                return
            body = bytearray()
            try:
                for _ in range(told.chunks):
                    body += (await sub.next_msg(timeout=self.answer_timeout)).data
            except (nats.errors.TimeoutError, TimeoutError):
                await _json(send, 502, "BadGateway", "the request's result did not arrive "
                            "whole from the gateway holding it")
                return
            await send({"type": "http.response.start", "status": told.status,
                        "headers": [(bytes(k), bytes(v)) for k, v in told.headers]})
            await send({"type": "http.response.body", "body": bytes(body)})
        finally:
            await sub.unsubscribe()


def _token(s: str) -> bool:
    return 0 < len(s) <= 64 and s.isascii() and s.replace("-", "").isalnum()


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
