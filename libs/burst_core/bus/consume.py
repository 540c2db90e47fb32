"""Durable pull consumers whose ack/nak/term/in-progress follows from the handler's
outcome: return -> ack; raise :class:`Retry` -> nak(delay); raise :class:`Reject` -> term;
any other exception -> nak with backoff, term after ``max_deliver``. Handlers never call
``msg.ack()`` themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from burst_core import logs
from burst_core.bus import _natspy
from burst_core.bus.topology import ensure_consumer

log = logs.get("burst.bus")


class Retry(Exception):
    """Raise from a handler to redeliver the message after ``delay`` seconds."""

    def __init__(self, delay: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay}s")
        self.delay = delay


class Reject(Exception):
    """Raise from a handler to drop a message for good (malformed, or no longer wanted)."""


Handler = Callable[[Msg], Awaitable[None]]


class Consumer:
    """A durable pull consumer driven by a handler's outcome.

    ``ack_wait`` is short; while a handler runs longer than a third of it the consumer
    sends in-progress acks, so a slow handler is not redelivered while a dead one is.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        handler: Handler,
        *,
        filter_subjects: list[str] | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        batch: int = 64,
        deliver_new: bool = False,
        concurrency: int = 1,
        name: str = "",
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.filter_subjects = filter_subjects or []
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.batch = batch
        self.deliver_new = deliver_new
        self.concurrency = max(1, concurrency)
        self.name = name or durable
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._sem = asyncio.Semaphore(self.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()

    def config(self) -> ConsumerConfig:
        cfg = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
            max_ack_pending=max(self.batch * 4, 256),
        )
        if len(self.filter_subjects) == 1:
            cfg.filter_subject = self.filter_subjects[0]
        elif self.filter_subjects:
            cfg.filter_subjects = self.filter_subjects
        return cfg

    async def start(self) -> None:
        await ensure_consumer(self.js, self.stream, self.config())
        self._psub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                # One at a time: nats-py's fetch of a batch, once a long-poll request is
                # pending, returns only when the batch is full or the request expires, so
                # a lone message (a placement order, a signal) waited up to a second.
                # fetch(1) returns as soon as the message is there; when many are waiting
                # each fetch returns at once, so a backlog still drains fast.
                msgs = await self._psub.fetch(1, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection blips: back off, keep going
                log.warning("fetch_failed", consumer=self.name, error=repr(e))
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                if self.concurrency == 1:
                    await self._handle(msg)
                else:
                    await self._sem.acquire()
                    t = asyncio.create_task(self._handle_release(msg))
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)

    async def _handle_release(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        finally:
            self._sem.release()

    async def _handle(self, msg: Msg) -> None:
        keepalive = asyncio.create_task(self._keepalive(msg))
        try:
            await self.handler(msg)
        except Retry as r:
            await quiet(msg.nak(delay=r.delay))
        except Reject as r:
            log.warning("message_rejected", consumer=self.name, subject=msg.subject, reason=str(r))
            await quiet(msg.term())
        except asyncio.CancelledError:
            await quiet(msg.nak())
            raise
        except Exception as e:
            n = msg.metadata.num_delivered if msg.metadata else 1
            log.exception("handler_failed", consumer=self.name, subject=msg.subject,
                          delivered=n, error=repr(e))
            await quiet(msg.nak(delay=min(0.2 * 2 ** min(n, 6), 10.0)))
        else:
            await quiet(msg.ack())
        finally:
            keepalive.cancel()

    async def _keepalive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            await quiet(msg.in_progress())


def deliveries(msg: Msg) -> int:
    """How many times JetStream delivered ``msg`` (1 the first time), read from its reply
    subject alone: ``msg.metadata`` builds a datetime and two dataclasses per message,
    on every input's way in."""
    tokens = _natspy.reply_tokens(msg.reply)
    return int(tokens[4] if len(tokens) == 9 else tokens[Msg.Ack.NumDelivered])


async def quiet(aw: Awaitable[Any]) -> None:
    """Await an ack, nak or other best-effort step; a failure is logged, not raised (an
    unacked message is redelivered)."""
    try:
        await aw
    except Exception as e:
        log.warning("ignored_error", error=repr(e))
