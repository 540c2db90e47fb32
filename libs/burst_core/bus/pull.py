"""Taking up to ``n`` messages from a durable pull consumer, leaving none in flight.

nats-py's ``fetch`` returns when its timeout runs out, even while the server is still
sending the batch it asked for; what arrives after that goes to a subscription nobody
reads, stays unacknowledged until the consumer's AckWait, and then comes back out of
order (a queue's items skipped for 30 s, then handed out late). Here every pull request
is read to its end: the server ends one either with the last message of its batch or with
a status (404 nothing there, 408 expired), and a new request goes out only after the
previous one ended.
"""

from __future__ import annotations

import json

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst_core.bus._natspy import client_of

#: Beyond a request's own end: how long a silent server is waited for (then what came is
#: returned; anything later is redelivered after the consumer's AckWait).
SAFETY = 10.0


class ConsumerMissing(LookupError):
    """A pull request found no consumer to answer it (deleted, or never made)."""


def _status(msg: Msg) -> str:
    if msg.data or not msg.headers:
        return ""
    return msg.headers.get("Status", "")


async def pull(js: JetStreamContext, stream: str, durable: str, n: int,
               wait: float) -> list[Msg]:
    """Up to ``n`` messages of ``durable``: what is there now, or else (when ``wait`` > 0)
    the first to arrive within ``wait`` seconds and then what is there after it. Raises
    :class:`ConsumerMissing` when ``durable`` does not exist (the server's no-responders
    answer)."""
    nc = client_of(js)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        async def request(batch: int, expires: float) -> list[Msg]:
            req: dict[str, object] = {"batch": batch}
            if expires > 0:
                req["expires"] = int(expires * 1e9)
            else:
                req["no_wait"] = True
            await nc.publish(subject, json.dumps(req).encode(), reply=inbox)
            got: list[Msg] = []
            while len(got) < batch:
                try:
                    msg = await sub.next_msg(timeout=expires + SAFETY)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                status = _status(msg)
                if not status:
                    got.append(msg)
                elif status == "503" and not got:  # no responders: no such consumer
                    raise ConsumerMissing(f"no consumer {durable!r} on stream {stream!r}")
                elif status != "100":  # anything but a heartbeat ends the request
                    break
            return got

        msgs = await request(n, 0.0)
        if msgs or wait <= 0:
            return msgs
        msgs = await request(1, wait)
        if msgs and n > 1:
            msgs += await request(n - 1, 0.0)
        return msgs
    finally:
        await sub.unsubscribe()
