"""NATS JetStream helpers shared by every service.

- :func:`connect` opens a connection that reconnects forever.
- :func:`ensure_topology` creates Burst's streams, KV buckets and object store, idempotently.
- :func:`publish` publishes with a ``Nats-Msg-Id`` and retries through a leader change.
- :class:`Consumer` runs a durable pull consumer whose ack/nak/term/in-progress follows from
  the handler's outcome: return -> ack; raise :class:`Retry` -> nak(delay); raise
  :class:`Reject` -> term; any other exception -> nak with backoff, term after
  ``max_deliver``. Handlers never call ``msg.ack()`` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from burst_core import logs, names

log = logs.get("burst.bus")

DAY = 24 * 3600.0


class Retry(Exception):
    """Raise from a handler to redeliver the message after ``delay`` seconds."""

    def __init__(self, delay: float = 1.0, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay}s")
        self.delay = delay


class Reject(Exception):
    """Raise from a handler to drop a message for good (malformed, or no longer wanted)."""


@dataclass
class Topology:
    """Retention settings for the streams and buckets; defaults suit a single node."""

    replicas: int = 1
    result_retention: float = 7 * DAY
    control_retention: float = 1 * DAY
    metering_retention: float = 400 * DAY
    log_retention: float = 7 * DAY
    queue_retention: float = 1 * DAY  # as Modal: a queue's items live 24 h
    log_max_bytes: int = 1 << 30
    dedupe_window: float = 120.0
    extra_kv: dict[str, float] = field(default_factory=dict)


#: Seconds a reconnected client waits at most for JetStream to answer before it renews
#: its ordered consumers anyway.
JETSTREAM_READY_TIMEOUT = 30.0

#: The renewals of ordered consumers under way (kept referenced until done).
_resumes: set[asyncio.Task[None]] = set()


async def connect(url: str, name: str,
                  reconnected: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """A connection that reconnects for ever; ``reconnected`` runs after each reconnect
    (subscriptions are already renewed then).

    After a reconnect, every ordered consumer of the connection (KV watches, the
    gateway's outputs) is renewed at once (see :func:`resume_ordered`): a restarted
    nats-server forgot them, and nats-py notices only after two missed idle heartbeats,
    10 s in which a watch sees nothing and a waiting call gets no output."""
    conn: list[NATS] = []

    async def _err(e: Exception) -> None:
        log.warning("nats_error", error=str(e))

    async def _reconnected() -> None:
        if conn:  # not inline: this callback holds up nats-py's reconnect
            task = asyncio.ensure_future(_resume_when_ready(conn[0]))
            _resumes.add(task)
            task.add_done_callback(_resumes.discard)
        if reconnected is not None:
            await reconnected()

    nc = await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=_err,
        connect_timeout=5,
        reconnected_cb=_reconnected,
    )
    conn.append(nc)
    _order_pings(nc)
    return nc


def _order_pings(nc: NATS) -> None:
    """Make the client's PING follow what it has buffered. nats-py (2.16) writes a PING
    straight to the socket while SUB, UNSUB and PUB commands wait in its buffer for the
    flusher task, so the server's PONG could answer before it saw them: ``flush()`` after
    ``subscribe()`` returned before the interest existed (a publish just after was lost,
    ~5% of the time here), and ``drain()`` removed a subscription while messages published
    before it were still on their way (they were dropped). Writing the buffer first keeps
    the order they were made in."""
    send_ping = nc._send_ping

    async def ordered(future: Any = None) -> None:
        transport = nc._transport
        if nc._pending_data_size > 0 and transport is not None and nc.is_connected:
            transport.writelines(nc._pending)
            nc._pending = []
            nc._pending_data_size = 0
        await send_ping(future)

    nc._send_ping = ordered  # type: ignore[method-assign]


async def _resume_when_ready(nc: NATS) -> None:
    """Once JetStream answers again (a restarted server may still be loading its
    streams), renew the connection's ordered consumers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JETSTREAM_READY_TIMEOUT
    js = nc.jetstream()
    while nc.is_connected and loop.time() < deadline:
        try:
            await asyncio.wait_for(js.account_info(), 1.0)
            break
        except Exception:
            await asyncio.sleep(0.1)
    if not nc.is_connected:
        return  # disconnected again: the next reconnect renews them
    try:
        n = await resume_ordered(nc)
    except Exception as e:  # nats-py's own idle-heartbeat check still renews them
        log.warning("ordered_consumers_not_renewed", error=repr(e))
        return
    if n:
        log.info("ordered_consumers_renewed", count=n)


async def resume_ordered(nc: NATS) -> int:
    """Renew every ordered consumer of ``nc`` from the stream sequence after the last
    message it delivered (what nats-py does itself after missed heartbeats, without the
    wait). One that delivered nothing yet keeps its start policy (a follow "from now"
    must not replay the stream). Returns how many were renewed."""
    n = 0
    for sub in list(nc._subs.values()):
        jsi = getattr(sub, "_jsi", None)
        if jsi is None or not getattr(jsi, "_ordered", False) or jsi._ccreq is None:
            continue
        cfg = jsi._ccreq
        policy, start_seq = cfg.deliver_policy, cfg.opt_start_seq
        fresh = jsi._sseq == 0
        # Resubscribes on a new inbox and schedules the consumer's creation (a task that
        # has not run yet when this returns: the config can still be corrected).
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        if fresh and policy != DeliverPolicy.BY_START_SEQUENCE:
            cfg.deliver_policy, cfg.opt_start_seq = policy, start_seq
        n += 1
    return n


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError as e:
        # Exists with another config (an upgrade changed a limit): converge on ours.
        if e.err_code == 10058:
            await js.update_stream(cfg)
        else:
            raise


async def ensure_topology(js: JetStreamContext, topo: Topology | None = None) -> None:
    """Create every stream, KV bucket and the object store Burst uses. Idempotent."""
    t = topo or Topology()
    r = t.replicas
    streams = [
        StreamConfig(
            name=names.STREAM_INPUTS,
            subjects=[names.SUBJECTS_INPUTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.result_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_OUTPUTS,
            subjects=[names.SUBJECTS_OUTPUTS, names.SUBJECTS_ITEMS],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.result_retention,
            duplicate_window=t.dedupe_window,
            allow_direct=True,
        ),
        StreamConfig(
            name=names.STREAM_CONTROL,
            subjects=[names.SUBJECTS_CONTROL],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.control_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_METERING,
            subjects=[names.SUBJECTS_METERING],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.metering_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_QUEUES,
            subjects=[names.SUBJECTS_QUEUES],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.queue_retention,
        ),
        StreamConfig(
            name=names.STREAM_LOGS,
            subjects=[names.SUBJECTS_LOGS],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.log_retention,
            max_bytes=t.log_max_bytes,
        ),
    ]
    for cfg in streams:
        await _ensure_stream(js, cfg)
    kvs: dict[str, float] = {
        names.KV_DEPLOYMENTS: 0,
        names.KV_AGENTS: 0,
        names.KV_HEARTBEATS: 0,
        names.KV_CALLS: t.result_retention,
        names.KV_IDEMPOTENCY: t.result_retention,
        names.KV_DICTS: 0,
        names.KV_MAPS: t.result_retention,
        names.KV_WAITING: 0,
        names.KV_TOKENS: 0,
        names.KV_SERVICES: 0,
        names.KV_LEDGER: 0,
        names.KV_LEASES: 0,
        **t.extra_kv,
    }
    for bucket, ttl in kvs.items():
        await ensure_kv(js, bucket, ttl=ttl, replicas=r)
    for store, ttl in ((names.OBJ_BUNDLES, 0.0), (names.OBJ_BLOBS, t.result_retention)):
        try:
            await js.object_store(store)
        except nats.js.errors.BucketNotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                # (nats-py overwrites config.bucket with its bucket argument: pass both)
                await js.create_object_store(
                    store, config=ObjectStoreConfig(bucket=store, ttl=ttl or None, replicas=r))


async def ensure_kv(js: JetStreamContext, bucket: str, ttl: float = 0,
                    replicas: int = 1) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, ttl=ttl or None, replicas=replicas)
        )
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)  # created by a racing service


class _Direct:
    """Stands in for a nats-py subscription's pending queue: each message goes to a plain
    function as the client reads it, instead of into a queue that the subscription's own
    task empties (one task wake-up per message, on the warm path of every call).

    The handler runs inside the client's read loop: it must not block, and it hands
    anything that awaits to a task. What it raises is logged and dropped, as nats-py
    does for a callback's errors."""

    __slots__ = ("sub", "handler")

    def __init__(self, sub: Any, handler: Callable[[Msg], None]) -> None:
        self.sub, self.handler = sub, handler

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # counted as queued by the caller
        try:
            self.handler(msg)
        except Exception as e:
            log.error("subscription_handler_failed", subject=msg.subject, error=repr(e))

    # What nats-py asks of the queue elsewhere (drain, unsubscribe, pending counts).
    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


def direct(sub: Any, handler: Callable[[Msg], None]) -> Any:
    """Deliver ``sub``'s messages (a subscription made without a callback) straight to
    ``handler``; see :class:`_Direct`. Returns ``sub``."""
    if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
        raise RuntimeError("this nats-py's subscriptions have no pending queue to replace; "
                           "pin nats-py to a version burst_core.bus.direct knows")
    sub._pending_queue = _Direct(sub, handler)
    return sub


async def subscribe_direct(nc: NATS, subject: str, handler: Callable[[Msg], None],
                           queue: str = "") -> Any:
    """A core subscription whose messages go straight to ``handler`` (see :func:`direct`)."""
    return direct(await nc.subscribe(subject, queue=queue), handler)


#: Clients that wrote with :func:`send_now` in the current turn of the event loop.
_sent_this_turn: set[int] = set()


def send_now(nc: NATS) -> None:
    """Write what the client has buffered now: nats-py leaves it to its flusher task, a
    turn of the event loop later, on the way of every call's input and output. (The
    flusher, woken all the same, then finds nothing left to write.)

    Once per client and loop turn: what more is published in the same turn (a map's
    outputs, many per turn) is gathered by the flusher into one write, as before, not
    written one syscall each. While the client is not connected nothing is written
    here: what is buffered waits for the reconnect."""
    transport = nc._transport
    if nc._pending_data_size <= 0 or transport is None or not nc.is_connected:
        return
    key = id(nc)
    if key in _sent_this_turn:
        return
    _sent_this_turn.add(key)
    asyncio.get_running_loop().call_soon(_sent_this_turn.discard, key)
    transport.writelines(nc._pending)
    nc._pending = []
    nc._pending_data_size = 0


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
        self.nc: NATS = js._nc
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
    retry_for: float = 6.0,
) -> Any:
    """Publish to JetStream and wait for the stored ack.

    Acks come back on one shared subscription per connection (not a request with its own
    reply inbox each). Retries for ``retry_for`` seconds while no stream answers (a leader
    election takes about 4 s in an R3 cluster); the msg id makes the retries safe.
    """
    hdrs = dict(headers or {})
    if msg_id:
        hdrs["Nats-Msg-Id"] = msg_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = 0.05
    while True:
        try:
            return await _publish_once(js, subject, payload, hdrs, 2.0)
        except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError):
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


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
    tokens = Msg.Metadata._get_metadata_fields(msg.reply)
    return int(tokens[4] if len(tokens) == 9 else tokens[Msg.Ack.NumDelivered])


async def quiet(aw: Awaitable[Any]) -> None:
    """Await an ack, nak or other best-effort step; a failure is logged, not raised (an
    unacked message is redelivered)."""
    try:
        await aw
    except Exception as e:
        log.warning("ignored_error", error=repr(e))


async def ensure_consumer(js: JetStreamContext, stream: str, cfg: ConsumerConfig) -> None:
    try:
        await js.add_consumer(stream, cfg)
    except nats.js.errors.BadRequestError as e:
        # Exists with other settings: update in place where JetStream allows it.
        if e.err_code in (10148, 10013, 10105):
            await js._jsm.add_consumer(stream, cfg)  # pragma: no cover - same call, retried
        else:
            raise


def kv_deleted(entry: Any) -> bool:
    """Whether a watched KV entry says its key is gone (deleted, purged, or empty)."""
    return entry.operation in ("DEL", "PURGE") or not entry.value


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """Value and revision of ``key``, or ``(None, 0)`` when absent or deleted."""
    try:
        e = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None, 0
    return e.value, e.revision or 0


async def kv_keys(kv: KeyValue, prefix: str = "") -> list[str]:
    """The bucket's keys (under ``prefix`` + '.', when given) as its stream lists their
    subjects, sorted; a deleted key is listed too (its tombstone is its last message).

    Not ``KeyValue.keys()`` or a watcher: those may decide they are done before they
    counted the messages already on their way, and then list some keys or none at all (a
    status showing no agents while one is busy, a ledger piece never cleaned up).
    """
    pre = kv._pre
    info = await kv._js.stream_info(kv._stream,
                                    subjects_filter=f"{pre}{prefix}.>" if prefix else f"{pre}>")
    return sorted(subject[len(pre):] for subject in (info.state.subjects or {}))


async def kv_items(js: JetStreamContext, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every live key of a (small) bucket, under ``prefix`` + '.' when given, with its
    value (see :func:`kv_keys`)."""
    kv = await js.key_value(bucket)
    return await kv_values(kv, prefix)


async def kv_values(kv: KeyValue, prefix: str = "") -> dict[str, bytes]:
    """Key -> value of every live key of ``kv`` (under ``prefix`` + '.', when given)."""
    out: dict[str, bytes] = {}
    for key in await kv_keys(kv, prefix):
        raw, _ = await kv_get(kv, key)
        if raw is not None:
            out[key] = raw
    return out


async def kv_cas(
    kv: KeyValue,
    key: str,
    mutate: Callable[[bytes | None], bytes | None],
    attempts: int = 50,
) -> tuple[bytes | None, int]:
    """Compare-and-set loop: apply ``mutate`` to the current value until it sticks.

    ``mutate`` returns the new value, or ``None`` to leave the entry as it is. Returns the
    value written (or None) and its revision. Raises RuntimeError after ``attempts``
    conflicting writers in a row.
    """
    for _ in range(attempts):
        cur, rev = await kv_get(kv, key)
        new = mutate(cur)
        if new is None:
            return None, rev
        try:
            if rev == 0:
                rev = await kv.create(key, new)
            else:
                rev = await kv.update(key, new, last=rev)
            return new, rev
        except nats.js.errors.KeyWrongLastSequenceError:
            await asyncio.sleep(0)
            continue
    raise RuntimeError(f"compare-and-set on {kv._name}/{key} lost {attempts} times in a row")
