"""Publishing to JetStream with a msg id, acks on one shared subscription per
connection, retries through a leader change."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from burst_core.bus import _natspy
from burst_core.bus.connection import send_now, subscribe_direct
from burst_core.bus.retry import MAX_DELAY
from burst_core.bus.retry import retry_for as nats_retry_for


class _AckWire(msgspec.Struct):
    """A JetStream publish ack as it comes (msgspec reads it several times faster than
    ``json`` and nats-py's dataclass)."""

    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_AckWire)


class _Acks:
    """One subscription for the publish acks of a connection: a publish is one message
    with a reply subject ``<inbox>.<n>`` and a future, not a request with a timed wait.
    (nats-py's own ``publish_async`` loses error answers: its handler raises them.)"""

    def __init__(self, js: JetStreamContext) -> None:
        self.nc: NATS = _natspy.client_of(js)
        self.prefix = self.nc.new_inbox() + "."
        self.futs: dict[str, asyncio.Future[Any]] = {}
        self._n = 0
        self._sub: Any = None
        self.started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._sub = await subscribe_direct(self.nc, self.prefix + "*", self._on_ack)

    async def send(self, subject: str, payload: bytes,
                   headers: dict[str, str] | None) -> tuple[str, asyncio.Future[Any]]:
        self._n += 1
        token = str(self._n)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futs[token] = fut
        await self.nc.publish(subject, payload, reply=self.prefix + token, headers=headers)
        return token, fut

    def _on_ack(self, msg: Msg) -> None:
        fut = self.futs.pop(msg.subject[len(self.prefix):], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = _ack_decoder.decode(msg.data)
            if resp.error is not None:
                try:  # raises the error's own class (BadRequestError, ...)
                    err: Exception = nats.js.errors.APIError.from_error(resp.error)
                except nats.js.errors.APIError as e:
                    err = e
                fut.set_exception(err)
            else:
                fut.set_result(PubAck(stream=resp.stream, seq=resp.seq, domain=resp.domain,
                                      duplicate=resp.duplicate))
        except Exception as e:  # an answer that is not a JetStream ack
            fut.set_exception(nats.js.errors.APIError(description=f"bad publish ack: {e!r}"))


async def _acks(js: JetStreamContext) -> _Acks:
    acks: _Acks | None = getattr(js, "_burst_acks", None)
    if acks is not None and acks.started is not None and acks.started.done() \
            and acks.started.exception() is not None:
        acks = None  # its subscription failed (a connection blip): set it up again
    if acks is None:  # the first publishes may race: they share one subscription
        acks = _Acks(js)
        acks.started = asyncio.ensure_future(acks.start())
        js._burst_acks = acks  # type: ignore[attr-defined]
    if acks._sub is None and acks.started is not None:
        await asyncio.shield(acks.started)
    return acks


async def _publish_once(js: JetStreamContext, subject: str, payload: bytes,
                        headers: dict[str, str] | None, timeout: float) -> Any:
    """Publish and wait for the ack, or ``nats.errors.TimeoutError`` after ``timeout``
    (a plain timer, no task)."""
    acks = await _acks(js)
    token, fut = await acks.send(subject, payload, headers or None)
    send_now(acks.nc)

    def expire() -> None:
        if not fut.done():
            fut.set_exception(nats.errors.TimeoutError())

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await fut
    finally:
        timer.cancel()
        acks.futs.pop(token, None)


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
    retry_for: float | None = None,
) -> Any:
    """Publish to JetStream and wait for the stored ack.

    Acks come back on one shared subscription per connection (not a request with its own
    reply inbox each). Retries for ``retry_for`` seconds (default ``BURST_NATS_RETRY_FOR``)
    while no stream answers (a leader election takes 4-9 s in an R3 cluster); the msg id
    makes the retries safe.
    """
    hdrs = dict(headers or {})
    if msg_id:
        hdrs["Nats-Msg-Id"] = msg_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (nats_retry_for() if retry_for is None else retry_for)
    delay = 0.05
    while True:
        try:
            return await _publish_once(js, subject, payload, hdrs, 2.0)
        except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionReconnectingError):
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)


async def publish_many(js: JetStreamContext, msgs: list[tuple[str, bytes, dict[str, str]]],
                       timeout: float = 2.0) -> list[Any]:
    """Publish many messages at once and wait for all their acks, with one timer for the
    lot. Returns, in order, each message's PubAck or the exception it got (no retries:
    the caller decides, by msg id, what is safe to send again)."""
    acks = await _acks(js)
    sent = [await acks.send(subject, payload, hdrs or None) for subject, payload, hdrs in msgs]
    send_now(acks.nc)
    futs = [f for _, f in sent]
    try:
        if futs:
            await asyncio.wait(futs, timeout=timeout)
    finally:
        for token, f in sent:
            acks.futs.pop(token, None)
            if not f.done():
                f.set_exception(nats.errors.TimeoutError())
    return [f.exception() or f.result() for f in futs]
