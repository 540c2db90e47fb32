"""A function's inputs on this agent: one continuous pull shared by its ready containers.

One :class:`InputPuller` per (agent, function) holds one inbox and keeps pull requests
open on the function's durable consumer for about as many inputs ("credits") as its
containers have free slots. Each input goes to the most recently freed slot (a LIFO
stack), so a lone call lands on the container that ran the previous one, caches warm,
not on the least recently used one (JetStream serves waiting pull requests in turn);
and an input does not cost a pull request of its own: top-ups are batched.

Credits:
- all free slots are requested when a container joins; each delivered input uses one;
  as slots free up, more are requested once the shortfall reaches half the free slots,
  and at once when no credit is left while a slot is free;
- a request lingers ``fetch_timeout`` at the server, then its 408 returns the credits
  it did not use (``Nats-Pending-Messages``) and it is renewed; one that is never
  answered is presumed lost another ``fetch_timeout`` later;
- a 409 (consumer deleted, leadership change, a limit) or 503 (no consumer) ends its
  request; after one, the pull waits ``pull_retry``, and a deleted or missing consumer
  is made again first; a reconnect forgets every request and asks anew.

Containers whose shim runs inputs in order (see ``AgentSettings.input_prefetch``) also
offer queue slots: an input in one waits in the container behind the one running, so
the container goes on to it without a round trip through here and NATS. Queue slots are
asked for only while the function's inputs here are short (their average run time under
``prefetch_max_run``), and filled only when no run slot is free: a lone input still goes
to a free container.

Invariants:
- credits may exceed the free slots (a container stopped or froze while its slots were
  requested; a reconnect asked again while old requests lived), never the reverse while
  a slot is free: an input that finds no free slot waits up to ``input_hold`` for one of
  its function here, then is handed back (nak). Its redelivery counts as an internal
  retry, as for any input a stopping container hands back (see attempts.py): a nak
  cannot tell that the input never ran, hence the wait first;
- once the function's last container here is gone the inbox is drained: what is on its
  way still arrives (and is handed back), and JetStream drops the pull requests of an
  inbox nobody listens to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from burst_agent import acks
from burst_agent.acks import Nak
from burst_core import bus, logs

if TYPE_CHECKING:
    from burst_agent.settings import AgentSettings

log = logs.get("burst.agent.inputs")


class Container(Protocol):
    """A container as the pull sees it: an id, and free slots it fills with
    ``_dispatch`` (called with the slot already taken)."""

    @property
    def id(self) -> str: ...

    def _dispatch(self, msg: Msg) -> None: ...

#: Header of a 408 (or 409): how many messages of that request were not delivered.
PENDING_MESSAGES = "Nats-Pending-Messages"


@dataclass
class _Request:
    batch: int
    #: Loop time after which, still unanswered, the request is presumed lost.
    lost_after: float


class InputPuller:
    """The pull of one function's inputs for its containers on this agent.

    A container joins with its free slots once it is ready, hands each slot back with
    :meth:`freed` when the input in it is done (or was never run), and leaves when it
    stops. ``Container._dispatch`` is called with the slot already taken.
    """

    def __init__(self, nc: NATS, stream: str, consumer: str, settings: AgentSettings,
                 ensure_consumer: Callable[[], Awaitable[object]]) -> None:
        self.nc = nc
        self.consumer = consumer
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._ensure_consumer = ensure_consumer
        self._expires = settings.fetch_timeout
        self._hold = settings.input_hold
        self._retry = settings.pull_retry
        self._inbox = nc.new_inbox()
        self._members: dict[str, Container] = {}
        #: One entry per free slot, the most recently freed on top; queue slots apart.
        self._free: list[Container] = []
        self._qfree: list[Container] = []
        self._max_run = settings.prefetch_max_run
        #: Average seconds an input of the function ran here (recent ones weigh most).
        self.run_avg: float | None = None
        #: Inputs delivered while no slot was free, with the loop time they are handed back.
        self._held: deque[tuple[Msg, float]] = deque()
        #: Open pull requests by reply subject; ``_credits`` of their messages are due.
        self._requests: dict[str, _Request] = {}
        self._credits = 0
        self._seq = 0
        self._retry_at = 0.0
        self._rebind = False
        self._closing = False
        #: Set once the pull stops for good (draining): a container joins a new one.
        self.closed = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.log = log.bind(consumer=consumer)
        self.task = asyncio.create_task(self._run())

    # ---- containers ----------------------------------------------------------------
    def join(self, c: Container, free_slots: int, queue_slots: int = 0) -> None:
        """A ready container's ``free_slots`` (and ``queue_slots``) are now this pull's to
        fill."""
        self._members[c.id] = c
        self._closing = False
        for _ in range(free_slots):
            self.freed(c)
        for _ in range(queue_slots):
            self.freed(c, queued=True)

    def leave(self, c: Container) -> None:
        """A stopping container: its free slots are no longer offered."""
        if self._members.pop(c.id, None) is None:
            return
        self._free = [x for x in self._free if x is not c]
        self._qfree = [x for x in self._qfree if x is not c]
        if not self._members:
            self._closing = True
        self._wake.set()

    def freed(self, c: Container, queued: bool = False) -> None:
        """One of ``c``'s slots (a queue slot with ``queued``) is free: an input waiting
        for one takes it, else the slot goes on top of its stack."""
        if self._held:
            msg, _ = self._held.popleft()
            self._dispatch(c, msg)
            return
        (self._qfree if queued else self._free).append(c)
        if self._want() > 0:
            self._wake.set()

    def ran(self, seconds: float) -> None:
        """An input of the function ran ``seconds`` here (its container's clock)."""
        seconds = max(0.0, seconds)
        was, avg = self.prefetching, self.run_avg
        self.run_avg = seconds if avg is None else avg + 0.2 * (seconds - avg)
        if not was and self.prefetching and self._want() > 0:  # queue slots to ask for
            self._wake.set()

    def crashed(self) -> None:
        """A container of the function died with inputs running (it crashed, ran out of
        memory, timed out): inputs waiting in line behind one are handed back each time,
        so none are asked for until a dozen or so short inputs bring the average down."""
        self.run_avg = max(self.run_avg or 0.0, 10 * self._max_run)

    @property
    def prefetching(self) -> bool:
        """Whether queue slots are asked for: the function's inputs here are short."""
        return self.run_avg is not None and self.run_avg < self._max_run

    def reset(self, rebind: bool = False) -> None:
        """Forget every request (a reconnect dropped them) and ask for all free slots."""
        self._requests.clear()
        self._credits = 0
        self._rebind = self._rebind or rebind
        self._wake.set()

    @property
    def credits(self) -> int:
        return self._credits

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def free_queue_slots(self) -> int:
        return len(self._qfree)

    # ---- deliveries ----------------------------------------------------------------
    def _on_msg(self, msg: Msg) -> None:
        """An input or a status, as the client reads it (see ``bus.direct``): nothing
        here waits; a hand-back goes out from a task."""
        if not msg.reply:  # a status: the answer to one of our requests
            self._on_status(msg)
            return
        # An input (its reply subject is its ack's): it used a credit.
        if self._credits > 0:
            self._credits -= 1
            if self._credits == 0:
                self._requests.clear()  # all served: none is open at the server
        c = self._pop()
        if c is not None:
            self._dispatch(c, msg)
        elif self._closing:
            self._spawn(acks.settle(msg, Nak()))
        else:
            self._held.append((msg, self._loop.time() + self._hold))
            self._wake.set()

    def _pop(self) -> Container | None:
        """A free run slot, else a queue slot (one asked for while inputs were short)."""
        for stack in (self._free, self._qfree):
            while stack:
                c = stack.pop()
                if c.id in self._members:
                    return c
        return None

    def _dispatch(self, c: Container, msg: Msg) -> None:
        try:
            c._dispatch(msg)
        except Exception as e:  # not lost until AckWait: handed back
            self.log.error("input_dispatch_failed", container_id=c.id, error=repr(e))
            self._spawn(acks.settle(msg, Nak()))

    def _on_status(self, msg: Msg) -> None:
        hdr = msg.headers or {}
        status = hdr.get("Status", "")
        req = self._requests.pop(msg.subject, None)
        if status == "100" or req is None:  # a heartbeat; a request settled already
            return
        pending = hdr.get(PENDING_MESSAGES, "")
        if pending.isdigit():
            self._credits -= int(pending)
        self._clamp()
        if status != "408":  # 408: expired as asked, renewed below
            description = hdr.get("Description", "")
            self.log.info("input_pull_ended", status=status, description=description)
            self._retry_at = self._loop.time() + self._retry
            if status == "503" or description == "Consumer Deleted":
                self._rebind = True
        self._wake.set()

    def _clamp(self) -> None:
        """No more credits than the open requests asked for (a 409 without its count, a
        request presumed lost): at worst more inputs come than slots are free."""
        self._credits = max(0, min(self._credits,
                                   sum(r.batch for r in self._requests.values())))

    # ---- requests ------------------------------------------------------------------
    def _want(self) -> int:
        """Credits to ask for now: the shortfall against the free slots once it is half
        of them, or at once when none is left."""
        free = len(self._free) + (len(self._qfree) if self.prefetching else 0)
        short = free - self._credits
        if short <= 0 or self._closing:
            return 0
        if self._credits == 0 or short >= max(1, free // 2):
            return short
        return 0

    async def _run(self) -> None:
        sub = None
        try:
            sub = await bus.subscribe_direct(self.nc, f"{self._inbox}.*", self._on_msg)
            while not self._closing:
                self._wake.clear()
                now = self._loop.time()
                await self._expire(now)
                if now >= self._retry_at:
                    await self._top_up(now)
                wake_at = self._next_wake()
                if self._wake.is_set():
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(wake_at):
                        await self._wake.wait()
        finally:
            self.closed = True
            if sub is not None:
                # Unsubscribed once all that is on its way arrived (it is handed back).
                with contextlib.suppress(Exception):
                    await sub.drain()
            while self._held:
                await acks.settle(self._held.popleft()[0], Nak())

    async def _expire(self, now: float) -> None:
        while self._held and self._held[0][1] <= now:
            msg, _ = self._held.popleft()
            self.log.info("input_handed_back_no_free_slot")
            await acks.settle(msg, Nak())
        lost = [k for k, r in self._requests.items() if r.lost_after <= now]
        if lost:
            for k in lost:
                del self._requests[k]
            self._clamp()
            self.log.info("input_pull_requests_lost", requests=len(lost))

    async def _top_up(self, now: float) -> None:
        if self._rebind:
            try:
                await self._ensure_consumer()
            except Exception as e:
                self.log.info("input_consumer_retry", error=repr(e))
                self._retry_at = now + self._retry
                return
            self._rebind = False
        n = self._want()
        if n <= 0:
            return
        self._seq += 1
        reply = f"{self._inbox}.{self._seq}"
        self._requests[reply] = _Request(n, now + 2 * self._expires)
        self._credits += n
        body = b'{"batch":%d,"expires":%d}' % (n, int(self._expires * 1e9))
        try:
            await self.nc.publish(self._next_subject, body, reply=reply)
        except Exception as e:  # closed or reconnecting with a full buffer
            self.log.info("input_pull_retry", error=repr(e))
            if self._requests.pop(reply, None) is not None:
                self._credits = max(0, self._credits - n)
            self._retry_at = now + self._retry

    def _next_wake(self) -> float | None:
        """When the loop must look again without being woken: a held input's or a
        request's deadline, or the end of a retry pause with slots to ask for."""
        times = [r.lost_after for r in self._requests.values()]
        if self._held:
            times.append(self._held[0][1])
        if self._retry_at > self._loop.time() and (self._rebind or self._want() > 0):
            times.append(self._retry_at)
        return min(times, default=None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
