"""Riding out a NATS leader election: what is worth trying again, and for how long.

In a three-node cluster (``burst up --nats-cluster 3``) a stream, bucket or the JetStream
API itself has no leader for a few seconds after the node that led it dies (nats-server's
election timeout is random between 4 and 9 s; more on a loaded machine): requests then
time out, find no responders or answer 503. Writes and JetStream requests are tried again
for ``BURST_NATS_RETRY_FOR`` seconds; a write's ``Nats-Msg-Id`` makes that safe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

T = TypeVar("T")

#: Errors a leader election (or a node restarting) answers with: trying again helps.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
)

#: The longest pause between two tries (seconds): small, so that what waited through an
#: election goes on within a fraction of a second of the new leader.
MAX_DELAY = 0.25
#: Default of ``BURST_NATS_RETRY_FOR`` (seconds).
DEFAULT_RETRY_FOR = 6.0


def transient(e: BaseException) -> bool:
    """Whether ``e`` is what NATS answers while a leader is being elected (JetStream's
    "temporarily unavailable" 10008 included)."""
    if isinstance(e, TRANSIENT):
        return True
    return isinstance(e, nats.js.errors.APIError) and getattr(e, "err_code", None) == 10008


def retry_for(env: dict[str, str] | None = None) -> float:
    """``BURST_NATS_RETRY_FOR``: seconds a write or JetStream request is tried again while
    NATS answers as it does during a leader election (6 s; ``burst up --nats-cluster 3``
    sets 30, beyond the longest election seen). Raises ValueError naming a bad value."""
    raw = (os.environ if env is None else env).get("BURST_NATS_RETRY_FOR", "").strip()
    if not raw:
        return DEFAULT_RETRY_FOR
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"setting BURST_NATS_RETRY_FOR={raw!r} is not a number of seconds "
                         "above 0")
    return value


async def retrying(fn: Callable[[], Awaitable[T]], within: float | None = None) -> T:
    """``await fn()``, tried again (backing off from 50 ms to :data:`MAX_DELAY`) while it
    fails with a :func:`transient` error, for ``within`` seconds (default
    :func:`retry_for`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (retry_for() if within is None else within)
    delay = 0.05
    while True:
        try:
            return await fn()
        except Exception as e:
            if not transient(e) or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)
