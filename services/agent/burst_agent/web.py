"""Web requests on this agent: taken from the gateway over core NATS, run in a container
of the function, their response frames streamed back to the gateway.

While this agent has ready containers of a web function it subscribes to the function's
web subject in the queue group ``names.WEB_QUEUE``: NATS hands each request to one such
agent, and the gateway gets "no responders" when there is none (it then holds the
request while a container starts). A request taken here is answered ``WebAccepted`` at
once, naming the subject its body chunks and cancel come on; it then runs in the
container with the fewest requests and inputs, or waits here (in order) for a free slot
(``@burst.concurrent``'s ``max_inputs``). Once it runs in a container it is never
handed to another: a container that goes away with it answers it 502.

A request waiting here for a slot (its whole body here, at most one message) is offered
every ``web_move_interval`` to the function's agents (the same queue group) marked
``free_only``: an agent with a container that runs it at once takes it, the others
decline. So requests that came while every container here was full reach the container
the scheduler started for them on another agent, instead of waiting for a slot here;
the gateway is told (``WebMoved``) where its cancel goes now, and a cancel that still
comes here is passed on.

Invariants:
- a container's ``web_in_flight`` counts the requests running in it; its heartbeat view
  counts them as inputs in flight (the autoscaler sees them), and it is busy (never
  stopped as idle) while one runs;
- every request taken ends with one ``WebEnd`` sent to the gateway;
- every ``web_keepalive`` seconds each request held sends ``WebAlive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from burst import wire
from burst_core import logs, names
from burst_core.schemas import FunctionDeployed, decoder
from burst_core.tracing import TRACEPARENT

if TYPE_CHECKING:
    from burst_agent.agent import Agent
    from burst_agent.container import Container

log = logs.get("burst.agent.web")

FunctionDeployedDecoder = decoder(FunctionDeployed)

#: Frames of one request waiting together go as one message up to about this size (a
#: NATS message is at most 1 MiB by default; a frame's body at most 256 KiB).
BATCH_BYTES = 512 << 10


def _message(parts: list[bytes]) -> bytes:
    """One encoded frame as it is, several as a msgpack array of them (``wire.decode_web``
    reads both)."""
    if len(parts) == 1:
        return parts[0]
    n = len(parts)
    header = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return header + b"".join(parts)


@dataclass
class _Request:
    head: wire.WebRequest
    fn_key: str
    reply: str
    container: Container | None = None
    #: Body chunks (or WebSocket messages) that came while it waited for a slot.
    pending: list[wire.WebRequestBody | wire.WebCancel | wire.WebSocketMessage
                  | wire.WebSocketClose] = field(default_factory=list)
    status: int = 0
    started: float = field(default_factory=time.monotonic)
    #: When it went into a container (monotonic; 0: never): its queue time ends there.
    ran_at: float = 0.0
    #: Being offered to other agents: frames that come meanwhile wait in ``pending``.
    moving: bool = False
    #: A traced request's context (its ``agent.web_request`` span is made at its end).
    trace: Any = None
    received: float = field(default_factory=time.time)


class WebRelay:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.members: dict[str, list[Container]] = {}
        self.subs: dict[str, Subscription] = {}
        self.waiting: dict[str, deque[_Request]] = {}
        self.requests: dict[str, _Request] = {}
        self._req_sub: Subscription | None = None
        self._deployed_sub: Subscription | None = None
        #: Containers of a web function's older deployment (id -> when, monotonic): they
        #: take no request that came after, and stop once what they run and the requests
        #: that came before are done (see ``_on_deployed``).
        self.retired: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Frames to the gateway, sent in order by one task (a response's frames must
        #: not overtake each other); frames for one request that are waiting together go
        #: as one message (a list), as a small response's start, body and end do.
        self._outbox: asyncio.Queue[tuple[str, msgspec.Struct]] = asyncio.Queue()
        self._subscribing: dict[str, asyncio.Lock] = {}
        #: Requests another agent took from here: req_id -> (its subject, until when,
        #: monotonic); a cancel that still comes here goes on to it.
        self.moved: dict[str, tuple[str, float]] = {}
        #: The request lines being written to the apps' logs.
        self._log_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._req_sub = await self.agent.nc.subscribe(
            names.web_requests_filter(self.agent.agent_id), cb=self._on_request_msg)
        self._deployed_sub = await self.agent.nc.subscribe(
            names.function_deployed_subject("*.*.*"), cb=self._on_deployed)
        self._tasks = [asyncio.create_task(self._keepalive_loop()),
                       asyncio.create_task(self._send_loop()),
                       asyncio.create_task(self._move_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in [self._req_sub, self._deployed_sub, *self.subs.values()]:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self.subs.clear()

    def counts(self) -> dict[str, int]:
        """Requests held per function key, running or waiting (the heartbeat's)."""
        out: dict[str, int] = {}
        for req in self.requests.values():
            out[req.fn_key] = out.get(req.fn_key, 0) + 1
        return out

    # ---- containers ------------------------------------------------------------------
    async def join(self, c: Container) -> None:
        """A ready container of a web function takes requests."""
        if c._stopping.is_set():  # stopped before it joined: it takes nothing
            return
        members = self.members.setdefault(c.fn_key, [])
        if c not in members:
            members.append(c)
        async with self._subscribing.setdefault(c.fn_key, asyncio.Lock()):
            if c.fn_key not in self.subs and self.members.get(c.fn_key):
                sub = await self.agent.nc.subscribe(
                    names.web_subject(c.fn_key), queue=names.WEB_QUEUE, cb=self._on_request)
                if self.members.get(c.fn_key):
                    self.subs[c.fn_key] = sub
                else:  # its last container left while subscribing
                    await self._unsubscribe(sub)
        self._dispatch(c.fn_key)

    def leave(self, c: Container) -> None:
        """A stopping container takes no new requests (those it runs finish or fail)."""
        members = self.members.get(c.fn_key, [])
        if c in members:
            members.remove(c)
        if not members:
            self.members.pop(c.fn_key, None)
            sub = self.subs.pop(c.fn_key, None)
            if sub is not None:
                asyncio.get_running_loop().create_task(self._unsubscribe(sub))
            for req in self.waiting.pop(c.fn_key, deque()):
                self._end(req, wire.WebEnd(req_id=req.head.req_id, status=502,
                                           error="no container of the function is left"))

    def gone(self, c: Container) -> None:
        """The container's process is gone: its requests end with 502."""
        self.leave(c)
        why = f"container {c.id} stopped ({c.stop_reason or 'exited'})"
        for req in [r for r in self.requests.values() if r.container is c]:
            self._end(req, wire.WebEnd(req_id=req.head.req_id, status=502, error=why))

    async def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _on_deployed(self, msg: Msg) -> None:
        """A web function was redeployed: its containers of older deployments here take no
        new requests (the next ones start the new code: no container of it is ready, so
        they are held while one starts) and stop once what they run is done."""
        try:
            event = FunctionDeployedDecoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        fn_key = names.function_key(event.workspace, event.app, event.function.name)
        for c in list(self.agent.containers.values()):
            if (c.fn_key != fn_key or not c.fn.web or c._stopping.is_set()
                    or c.placement.deployment_id == event.deployment_id):
                continue
            log.info("web_container_retired", container_id=c.id, fn_key=fn_key,
                     deployment_id=event.deployment_id)
            self.retired[c.id] = time.monotonic()
            self._stop_if_done(c)
        if not self._live(fn_key):  # the next request is offered again: to the new code
            sub = self.subs.pop(fn_key, None)
            if sub is not None:
                await self._unsubscribe(sub)

    def _live(self, fn_key: str) -> list[Container]:
        """The containers of ``fn_key`` that take new requests."""
        return [c for c in self.members.get(fn_key, [])
                if not c._stopping.is_set() and c.id not in self.retired]

    def _may_run(self, c: Container, req: _Request) -> bool:
        """A retired container runs only requests that came before it was retired."""
        retired = self.retired.get(c.id)
        return retired is None or req.started < retired

    def _stop_if_done(self, c: Container) -> None:
        if (c.id in self.retired and not c.web_in_flight and not c.in_flight
                and not any(self._may_run(c, r) for r in self.waiting.get(c.fn_key, ()))):
            del self.retired[c.id]
            asyncio.get_running_loop().create_task(c.stop("redeployed"))

    # ---- from the gateway ------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        try:
            head = wire.web_decoder.decode(msg.data)
        except msgspec.DecodeError as e:
            log.warning("web_request_undecodable", error=repr(e))
            return
        if not isinstance(head, wire.WebRequest) or not head.reply:
            return
        fn_key = msg.subject.removeprefix(names.web_subject(""))
        if not self._live(fn_key) or head.req_id in self.requests or (
                head.free_only and (self.waiting.get(fn_key) or not any(
                    c.id not in self.retired for c in self._free(fn_key)))):
            # Its last container left as the request came (the gateway offers it again,
            # as when no agent listens), or an agent offers a request waiting there and
            # no container here would run it at once: not taken.
            await msg.respond(wire.encode(wire.WebAccepted(req_id=head.req_id, subject="")))
            return
        if head.free_only:
            log.info("web_request_taken_over", fn_key=fn_key, req_id=head.req_id)
            head = msgspec.structs.replace(head, free_only=False)
        req = _Request(head=head, fn_key=fn_key, reply=head.reply)
        if msg.headers and TRACEPARENT in msg.headers:  # a traced request (rare)
            req.trace = self.agent.tracing.incoming(msg.headers)
        self.requests[head.req_id] = req
        self.waiting.setdefault(fn_key, deque()).append(req)
        self._dispatch(fn_key)  # the request frame reaches the shim before the answer
        await msg.respond(wire.encode(wire.WebAccepted(
            req_id=head.req_id, queued=req.container is None,
            subject=names.web_request_subject(self.agent.agent_id, head.req_id))))

    async def _on_request_msg(self, msg: Msg) -> None:
        """A body chunk or a cancel of a request taken here."""
        try:
            frame = wire.web_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if not isinstance(frame, wire.WebRequestBody | wire.WebCancel | wire.WebSocketMessage
                          | wire.WebSocketClose):
            return
        req = self.requests.get(frame.req_id)
        if req is None:
            moved = self.moved.get(frame.req_id)
            if moved is not None:  # another agent runs it now
                await self.agent.nc.publish(moved[0], msg.data)
            return
        if req.moving:
            req.pending.append(frame)
        elif req.container is not None:
            self._to_shim(req.container, frame)
        elif isinstance(frame, wire.WebCancel):  # never started: nothing runs it
            waiting = self.waiting.get(req.fn_key)
            if waiting is not None and req in waiting:
                waiting.remove(req)
            self._end(req, wire.WebEnd(req_id=frame.req_id, error="cancelled", status=499))
        else:
            req.pending.append(frame)

    # ---- running ---------------------------------------------------------------------
    @staticmethod
    def _load(c: Container) -> int:
        return c.web_in_flight + len(c.in_flight)

    def _free(self, fn_key: str, req: _Request | None = None) -> list[Container]:
        """The containers of ``fn_key`` with a free slot (that may run ``req``)."""
        return [c for c in self.members.get(fn_key, [])
                if not c._stopping.is_set() and c._writer is not None
                and self._load(c) < c.max_inputs and (req is None or self._may_run(c, req))]

    def _dispatch(self, fn_key: str) -> None:
        """Start waiting requests of ``fn_key`` in containers with a free slot."""
        waiting = self.waiting.get(fn_key)
        while waiting:
            req = waiting[0]
            free = self._free(fn_key, req)
            if not free:
                return
            c = min(free, key=self._load)
            waiting.popleft()
            req.container = c
            req.ran_at = time.monotonic()
            c.web_in_flight += 1
            c.state, c.idle_since = "busy", None
            self._to_shim(c, req.head)
            for chunk in req.pending:
                self._to_shim(c, chunk)
            req.pending.clear()

    def _to_shim(self, c: Container, frame: Any) -> None:
        if c._writer is not None:
            with contextlib.suppress(Exception):
                c._writer.write(wire.frame(frame))

    # ---- from the shim ---------------------------------------------------------------
    def on_frame(self, c: Container, frame: Any) -> None:
        """A web frame from the shim (one of ``wire.WEB_FROM_SHIM``), on to the gateway."""
        req = self.requests.get(frame.req_id)
        if req is None or req.container is not c:
            return
        if isinstance(frame, wire.WebEnd):
            self._end(req, frame)
            return
        if isinstance(frame, wire.WebResponseStart):
            req.status = frame.status
        elif isinstance(frame, wire.WebSocketAccept):
            req.status = 101
        self._publish(req.reply, frame)

    def _end(self, req: _Request, end: wire.WebEnd) -> None:
        """The request is over: tell the gateway, free its slot, start the next one."""
        if self.requests.pop(req.head.req_id, None) is None:
            return
        self._publish(req.reply, end)
        status = req.status or end.status
        c = req.container
        now = time.monotonic()
        took = now - req.started
        if c is not None:
            c.web_in_flight -= 1
            outcome = "failure" if status >= 500 or (end.error and not req.status) \
                else "success"
            c.meter.count(outcome)
            # A request counts as a call of its function in /metrics: its latency from
            # the container's start of it, its queue time from the agent taking it.
            self.agent.figures.web(req.fn_key, outcome, now - req.ran_at,
                                   req.ran_at - req.started)
            if not c.web_in_flight and not c.in_flight and c.state == "busy":
                c.state, c.idle_since = "idle", time.time()
            self._stop_if_done(c)
            c.stop_if_retired()  # (a drained agent's container, once its requests end)
        path = req.head.root_path + req.head.path
        if req.trace is not None:
            self.agent.tracing.span(
                "agent.web_request", req.trace, names.split_function_key(req.fn_key)[0],
                req.head.req_id,
                start=req.received,
                attributes={"burst.container_id": c.id if c is not None else "",
                            "burst.agent_id": self.agent.agent_id,
                            "burst.status": status}).end()
        log.info("web_request", fn_key=req.fn_key, req_id=req.head.req_id,
                 method=req.head.method, path=path, status=status, error=end.error or None,
                 duration_s=round(took, 4), container_id=c.id if c is not None else None)
        if c is not None:  # the app's logs show each request it served, as Modal's do
            method = "WEBSOCKET" if req.head.websocket else req.head.method
            line = f"{method} {path} -> {status} ({took * 1000:.1f} ms)"
            task = asyncio.get_running_loop().create_task(c._log_line("stderr", line, ""))
            self._log_tasks.add(task)
            task.add_done_callback(self._log_tasks.discard)
        self._dispatch(req.fn_key)

    def _publish(self, subject: str, frame: msgspec.Struct) -> None:
        self._outbox.put_nowait((subject, frame))

    async def _send_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            i = 0
            while i < len(batch):
                subject = batch[i][0]
                parts = [wire.encode(batch[i][1])]
                size = len(parts[0])
                i += 1
                while (i < len(batch) and batch[i][0] == subject and len(parts) < 0xFFFF
                       and size < BATCH_BYTES):
                    parts.append(wire.encode(batch[i][1]))
                    size += len(parts[-1])
                    i += 1
                try:
                    await self.agent.nc.publish(subject, _message(parts))
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("web_frame_publish_failed", error=repr(e))

    # ---- to other agents ---------------------------------------------------------------
    @staticmethod
    def _movable(req: _Request) -> wire.WebRequest | None:
        """The head to offer a waiting request with (its whole body in it), or None when
        it cannot go: its body is still coming or too large for one message, or
        WebSocket messages wait for it."""
        if req.container is not None or req.moving:
            return None
        body = [req.head.body]
        more = req.head.more_body
        for frame in req.pending:
            if not isinstance(frame, wire.WebRequestBody):
                return None
            body.append(frame.body)
            more = frame.more_body
        whole = b"".join(body)
        if more or len(whole) > BATCH_BYTES:
            return None
        return msgspec.structs.replace(req.head, body=whole, more_body=False, free_only=True)

    async def _move_loop(self) -> None:
        settings = self.agent.settings
        while True:
            await asyncio.sleep(settings.web_move_interval)
            now = time.monotonic()
            for req_id in [r for r, (_, until) in self.moved.items() if until < now]:
                del self.moved[req_id]
            for fn_key in [k for k, q in self.waiting.items() if q]:
                try:
                    await self._move_waiting(fn_key)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("web_move_failed", fn_key=fn_key, error=repr(e))

    async def _move_waiting(self, fn_key: str) -> None:
        """Offer the requests waiting for ``fn_key``, oldest first, until one is declined."""
        while True:
            waiting = self.waiting.get(fn_key)
            if not waiting:
                return
            found = next(((i, r, h) for i, r in enumerate(waiting)
                          if (h := self._movable(r)) is not None), None)
            if found is None:
                return
            index, req, head = found
            del waiting[index]  # while offered, no container here starts it
            req.moving = True
            req.pending = []
            taken = ""
            try:
                msg = await self.agent.nc.request(names.web_subject(fn_key), wire.encode(head),
                                                  timeout=self.agent.settings.web_move_timeout)
                answer = wire.web_decoder.decode(msg.data)
                if isinstance(answer, wire.WebAccepted):
                    taken = answer.subject
            except nats.errors.NoRespondersError:
                pass
            except (nats.errors.TimeoutError, TimeoutError):
                # Another agent may run it: it is never run here too.
                req.moving = False
                self._end(req, wire.WebEnd(req_id=req.head.req_id, status=502,
                                           error="lost while handed to another agent"))
                return
            req.moving = False
            later, req.pending = req.pending, []
            if taken:
                self.requests.pop(req.head.req_id, None)
                self.moved[req.head.req_id] = (
                    taken, time.monotonic() + self.agent.settings.web_move_timeout)
                self._publish(req.reply, wire.WebMoved(req_id=req.head.req_id, subject=taken))
                for frame in later:
                    await self.agent.nc.publish(taken, wire.encode(frame))
                log.info("web_request_moved", fn_key=fn_key, req_id=req.head.req_id,
                         subject=taken)
                continue
            if not self._live(fn_key):  # its containers here left meanwhile
                self._end(req, wire.WebEnd(req_id=req.head.req_id, status=502,
                                           error="no container of the function is left"))
                return
            # Declined: it waits here again, in its place.
            req.head = msgspec.structs.replace(req.head, body=head.body, more_body=False)
            queue = self.waiting.setdefault(fn_key, deque())
            queue.insert(min(index, len(queue)), req)
            for frame in later:
                if isinstance(frame, wire.WebCancel):
                    if req in queue:
                        queue.remove(req)
                    self._end(req, wire.WebEnd(req_id=frame.req_id, error="cancelled",
                                               status=499))
                    break
                req.pending.append(frame)
            self._dispatch(fn_key)
            return

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.agent.settings.web_keepalive)
            for req in list(self.requests.values()):
                self._publish(req.reply, wire.WebAlive(req_id=req.head.req_id))
