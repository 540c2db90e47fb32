"""Connections that reconnect for ever, and writing and reading without waiting for
nats-py's tasks."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from burst_core import logs
from burst_core.bus import _natspy

log = logs.get("burst.bus")


#: Seconds a reconnected client waits at most for JetStream to answer before it renews
#: its ordered consumers anyway.
JETSTREAM_READY_TIMEOUT = 30.0

#: The renewals of ordered consumers under way (kept referenced until done).
_resumes: set[asyncio.Task[None]] = set()


def server_urls(url: str) -> list[str]:
    """The NATS servers of ``BURST_NATS_URL``: one URL, or several separated by commas
    (the nodes of a NATS cluster). Raises ValueError naming a bad one."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"setting BURST_NATS_URL={url!r} names no NATS server: use "
                         "nats://HOST:PORT, or several separated by commas")
    for u in urls:
        scheme, sep, rest = u.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            raise ValueError(f"setting BURST_NATS_URL: {u!r} is not a NATS server URL: use "
                             "nats://HOST:PORT (or tls://HOST:PORT), several separated by "
                             "commas")
    return urls


def tls_context(ca: str) -> ssl.SSLContext | None:
    """A client TLS context trusting only the cluster's CA (a PEM file), or None."""
    if not ca:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    return ctx


async def connect(url: str, name: str,
                  reconnected: Callable[[], Awaitable[None]] | None = None,
                  ca: str = "",
                  error: Callable[[Exception], Awaitable[None]] | None = None,
                  closed: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """A connection that reconnects for ever; ``reconnected`` runs after each reconnect
    (subscriptions are already renewed then). ``ca`` is the cluster CA's certificate
    file for TLS (``burst up --listen``).

    ``url`` may name several servers separated by commas (a NATS cluster, or the URLs of
    a join bundle; ``tls://user:password@host:port`` with credentials): the client
    connects to one of them and, when it goes away, to another at once (a server it
    could not reach is tried again after ``reconnect_time_wait``).

    After a reconnect, every ordered consumer of the connection (KV watches, the
    gateway's outputs) is renewed at once (see :func:`_natspy.resume_ordered`): a restarted
    nats-server forgot them, and nats-py notices only after two missed idle heartbeats,
    10 s in which a watch sees nothing and a waiting call gets no output.

    ``error`` gets each error the server or the connection reports (after it is logged);
    ``closed`` runs once the connection is closed for good (by ``close``, or by the
    server refusing our credentials, which nats-py does not retry).
    """
    conn: list[NATS] = []

    async def _err(e: Exception) -> None:
        log.warning("nats_error", error=str(e))
        if error is not None:
            await error(e)

    async def _reconnected() -> None:
        if conn:  # not inline: this callback holds up nats-py's reconnect
            task = asyncio.ensure_future(_resume_when_ready(conn[0]))
            _resumes.add(task)
            task.add_done_callback(_resumes.discard)
        if reconnected is not None:
            await reconnected()

    nc = await nats.connect(
        servers=server_urls(url),
        name=name,
        tls=tls_context(ca),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=_err,
        connect_timeout=5,
        reconnected_cb=_reconnected,
        **({"closed_cb": closed} if closed is not None else {}),
    )
    conn.append(nc)
    _natspy.order_pings(nc)
    if len(server_urls(url)) > 1:
        await _follow_leader_changes(nc)
    return nc


#: JetStream's advisory of a stream's new leader (the stream's name is the last token).
LEADER_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*"


async def _follow_leader_changes(nc: NATS) -> None:
    """In a NATS cluster, renew a stream's ordered consumers (KV watches, the gateway's
    outputs) as soon as the stream has a new leader: an ordered consumer lives on one node,
    and when that node dies while this client stays connected to another one, nats-py
    notices only after two missed idle heartbeats, seconds in which a watch sees nothing
    and a waiting call gets no output."""

    def elected(msg: Msg) -> None:
        stream = msg.subject.rsplit(".", 1)[-1]
        task = asyncio.ensure_future(_renew(nc, stream))
        _resumes.add(task)
        task.add_done_callback(_resumes.discard)

    await subscribe_direct(nc, LEADER_ELECTED, elected)


async def _renew(nc: NATS, stream: str) -> None:
    try:
        n = await _natspy.resume_ordered(nc, stream)
    except Exception as e:  # nats-py's own idle-heartbeat check still renews them
        log.warning("ordered_consumers_not_renewed", stream=stream, error=repr(e))
        return
    if n:
        log.info("ordered_consumers_renewed", stream=stream, count=n, reason="new_leader")


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
        n = await _natspy.resume_ordered(nc)
    except Exception as e:  # nats-py's own idle-heartbeat check still renews them
        log.warning("ordered_consumers_not_renewed", error=repr(e))
        return
    if n:
        log.info("ordered_consumers_renewed", count=n)


async def follow_from_now(js: JetStreamContext, subject: str,
                          stream: str) -> JetStreamContext.PushSubscription:
    """An ordered consumer of ``stream``'s ``subject`` from the messages stored after now
    on: started at the stream's next sequence rather than with ``DeliverPolicy.NEW``, so
    that its renewal after a server restart (:func:`connect`), made a moment after the
    reconnect, still starts there. With ``NEW``, one that had delivered nothing yet
    missed what was stored between the reconnect and its renewal (an output its follower
    waited for)."""
    info = await js.stream_info(stream)
    return await js.subscribe(
        subject, stream=stream, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                              opt_start_seq=info.state.last_seq + 1))


async def subscribe_direct(nc: NATS, subject: str, handler: Callable[[Msg], None],
                           queue: str = "") -> Any:
    """A core subscription whose messages go straight to ``handler`` 
    (see :func:`burst_core.bus.direct`)."""
    return _natspy.direct(await nc.subscribe(subject, queue=queue), handler)


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
    key = id(nc)
    if key in _sent_this_turn:
        return
    if _natspy.write_pending(nc):
        _sent_this_turn.add(key)
        asyncio.get_running_loop().call_soon(_sent_this_turn.discard, key)
