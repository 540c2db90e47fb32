"""Every use of nats-py's private attributes, in one place.

Burst leans on a few of nats-py's internals on its hot path (writing the client's buffer
now, delivering a subscription's messages without a task wake-up each, renewing ordered
consumers at once after a reconnect) and for a few things its public API lacks. Nothing
else in the repository touches a nats-py object's ``_``-attributes: it calls these
functions. :data:`REQUIRED` lists, per nats-py class, the attributes used here;
``tests/unit/test_natspy.py`` checks each on the installed nats-py, so an upgrade that
drops one fails by name (pyproject.toml pins the minor versions tested).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.kv import KeyValue

from burst_core import logs

log = logs.get("burst.bus")

#: nats-py class (module:qualname) -> the private attributes this module uses on its
#: instances (checked on real objects by the unit test) or on the class itself.
REQUIRED: dict[str, tuple[str, ...]] = {
    "nats.aio.client:Client": ("_send_ping", "_transport", "_pending", "_pending_data_size",
                               "_subs"),
    "nats.aio.subscription:Subscription": ("_pending_queue", "_pending_size", "_jsi"),
    "nats.js.client:JetStreamContext._JSI": ("_ordered", "_ccreq", "_sseq",
                                             "reset_ordered_consumer"),
    "nats.js.client:JetStreamContext": ("_nc", "_jsm"),
    "nats.js.manager:JetStreamManager": ("_api_request", "_prefix", "_timeout"),
    "nats.js.kv:KeyValue": ("_pre", "_js", "_stream", "_name"),
    "nats.js.kv:KeyValue.KeyWatcher": ("_sub",),
    "nats.aio.msg:Msg.Metadata": ("_get_metadata_fields",),
}


def client_of(js: JetStreamContext) -> NATS:
    """The connection a JetStream context publishes on."""
    nc: NATS = js._nc
    return nc


def write_pending(nc: NATS) -> bool:
    """Write what the client has buffered to its socket now (nats-py leaves it to its
    flusher task). Nothing is written while it is not connected. Returns whether it
    wrote."""
    transport = nc._transport
    if nc._pending_data_size <= 0 or transport is None or not nc.is_connected:
        return False
    transport.writelines(nc._pending)
    nc._pending = []
    nc._pending_data_size = 0
    return True


def order_pings(nc: NATS) -> None:
    """Make the client's PING follow what it has buffered. nats-py (2.16) writes a PING
    straight to the socket while SUB, UNSUB and PUB commands wait in its buffer for the
    flusher task, so the server's PONG could answer before it saw them: ``flush()`` after
    ``subscribe()`` returned before the interest existed (a publish just after was lost,
    ~5% of the time here), and ``drain()`` removed a subscription while messages published
    before it were still on their way (they were dropped). Writing the buffer first keeps
    the order they were made in."""
    send_ping = nc._send_ping

    async def ordered(future: Any = None) -> None:
        write_pending(nc)
        await send_ping(future)

    nc._send_ping = ordered  # type: ignore[method-assign]


async def resume_ordered(nc: NATS, stream: str | None = None) -> int:
    """Renew every ordered consumer of ``nc`` (of ``stream`` only, when given) from the
    stream sequence after the last message it delivered (what nats-py does itself after
    missed heartbeats, without the wait). One that delivered nothing yet keeps its start
    policy and sequence (a follow "from now" must not replay the stream; one pinned to a
    sequence, see :func:`burst_core.bus.follow_from_now`, misses nothing stored while it
    was being renewed). Returns how many were renewed."""
    n = 0
    for sub in list(nc._subs.values()):
        jsi = getattr(sub, "_jsi", None)
        if jsi is None or not getattr(jsi, "_ordered", False) or jsi._ccreq is None:
            continue
        if stream is not None and getattr(jsi, "_stream", None) != stream:
            continue
        cfg = jsi._ccreq
        policy, start_seq = cfg.deliver_policy, cfg.opt_start_seq
        fresh = jsi._sseq == 0
        # Resubscribes on a new inbox and schedules the consumer's creation (a task that
        # has not run yet when this returns: the config can still be corrected).
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        if fresh:  # (nats-py would start it at sequence 1: the whole stream again)
            cfg.deliver_policy, cfg.opt_start_seq = policy, start_seq
        n += 1
    return n


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


async def add_consumer_again(js: JetStreamContext, stream: str, cfg: ConsumerConfig) -> None:
    """The consumer-create call through the JetStream manager (to update one in place)."""
    await js._jsm.add_consumer(stream, cfg)


async def kv_subjects(kv: KeyValue, prefix: str = "") -> list[str]:
    """The keys of ``kv`` (under ``prefix`` + '.') as its stream lists their subjects.

    The server lists at most a page of subjects per stream-info reply (100,000 today), so
    this asks again from each page's end until it has them all.
    """
    pre: str = kv._pre
    jsm = kv._js._jsm
    filt = f"{pre}{prefix}.>" if prefix else f"{pre}>"
    subjects: list[str] = []
    while True:
        req = json.dumps({"subjects_filter": filt, "offset": len(subjects)}).encode()
        resp = await jsm._api_request(f"{jsm._prefix}.STREAM.INFO.{kv._stream}", req,
                                      timeout=jsm._timeout)
        page = list((resp.get("state") or {}).get("subjects") or {})
        subjects += page
        if not page or len(subjects) >= int(resp.get("total") or 0):
            break
    return sorted(subject[len(pre):] for subject in subjects)


async def watch_caught_up(watcher: Any, applied: int) -> bool:
    """Whether a KV watcher's consumer has nothing pending and delivered no stream
    sequence past ``applied`` (so every message it sent so far was handled)."""
    info = await watcher._sub.consumer_info()
    return bool(info.num_pending == 0 and (info.delivered.stream_seq or 0) <= applied)


def kv_subject(kv: KeyValue, key: str) -> str:
    """The stream subject a key of ``kv`` is stored under (to publish an entry directly)."""
    pre: str = kv._pre
    return pre + key


def kv_name(kv: KeyValue) -> str:
    """The bucket's name."""
    name: str = kv._name
    return name


def reply_tokens(reply: str) -> list[str]:
    """The tokens of a JetStream message's reply subject (its delivery metadata)."""
    tokens: list[str] = Msg.Metadata._get_metadata_fields(reply)
    return tokens
