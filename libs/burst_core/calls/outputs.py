"""Delivering outputs to the requests waiting for them.

Every process that waits on calls (each gateway replica; an agent once a container calls)
follows the outputs streams (transient calls' and the others') from "now" with an ordered
consumer each
(only stored outputs arrive: a publish JetStream refused as a duplicate never does) and
resolves the futures of the calls it waits on. An output counts only if its attempt token
is the call's current one; a stale attempt's output is refused and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Generic, TypeVar

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.schemas import AttemptChangedDecoder, Output, OutputDecoder

log = logs.get("burst.calls.outputs")


#: Outputs kept in memory for waiters that register after the output arrived (a map's
#: results polled in pages), at most this many and for at most ``RECENT_AGE`` seconds;
#: bigger ones are fetched from the stream instead. A waiter whose output was forgotten
#: finds it in the stream (``caller.STREAM_CHECK_AGE``): forgetting costs time, never
#: a result. Settings ``BURST_RECENT_OUTPUTS`` and ``BURST_RECENT_OUTPUTS_AGE``.
RECENT_MAX = 50_000
RECENT_AGE = 120.0
RECENT_MAX_PAYLOAD = 256 << 10

_V = TypeVar("_V")


class Recent(Generic[_V]):
    """Values by call id in arrival order, the oldest forgotten past ``max_items`` or
    once older than ``max_age`` seconds: memory follows the recent call rate, not the
    number of calls ever made."""

    __slots__ = ("max_items", "max_age", "clock", "_items")

    def __init__(self, max_items: int = RECENT_MAX, max_age: float = RECENT_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"BURST_RECENT_OUTPUTS must be an integer >= 1 "
                             f"(got {max_items!r})")
        if not max_age > 0:
            raise ValueError(f"BURST_RECENT_OUTPUTS_AGE must be > 0 seconds (got {max_age!r})")
        self.max_items, self.max_age, self.clock = max_items, max_age, clock
        self._items: OrderedDict[str, tuple[float, _V]] = OrderedDict()

    def put(self, call_id: str, value: _V) -> None:
        now = self.clock()
        items = self._items
        items.pop(call_id, None)  # (a retry's output: now the newest)
        items[call_id] = (now, value)
        while len(items) > self.max_items:
            items.popitem(last=False)
        self.expire(now)

    def expire(self, now: float | None = None) -> None:
        """Forget what arrived more than ``max_age`` seconds ago."""
        cutoff = (self.clock() if now is None else now) - self.max_age
        items = self._items
        while items:
            first = next(iter(items.values()))
            if first[0] > cutoff:
                break
            items.popitem(last=False)

    def get(self, call_id: str) -> _V | None:
        found = self._items.get(call_id)
        if found is None or found[0] <= self.clock() - self.max_age:
            return None
        return found[1]

    def __contains__(self, call_id: object) -> bool:
        return isinstance(call_id, str) and self.get(call_id) is not None

    def __len__(self) -> int:
        return len(self._items)


class Group:
    """A wait for any of many calls (a map's outstanding inputs): one event for all of
    them, instead of a future (and a done callback) per call."""

    __slots__ = ("tokens", "outputs", "unsure", "event")

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # call id -> the attempt token whose output counts
        self.outputs: dict[str, Output] = {}
        #: Outputs of another attempt than the waiter named: a retry may have moved the
        #: call on before the wait began (the waiter checks the call's record).
        self.unsure: dict[str, Output] = {}
        self.event = asyncio.Event()


class OutputRouter:
    def __init__(self, js: JetStreamContext, *, recent_max: int = RECENT_MAX,
                 recent_age: float = RECENT_AGE) -> None:
        self.js = js
        self._waiters: dict[str, list[tuple[str, asyncio.Future[Output]]]] = defaultdict(list)
        self._groups: dict[str, list[Group]] = {}
        self._subs: list[object] = []
        self._recent: Recent[Output] = Recent(recent_max, recent_age)
        self._big: Recent[bool] = Recent(recent_max, recent_age)

    async def start(self) -> None:
        for stream, subjects in ((names.STREAM_OUTPUTS, names.SUBJECTS_OUTPUTS),
                                 (names.STREAM_TRANSIENT_OUTPUTS,
                                  names.SUBJECTS_TRANSIENT_OUTPUTS)):
            sub = await bus.follow_from_now(self.js, subjects, stream)
            self._subs.append(sub)
            # Each output straight to its waiter, not through a queue and a task.
            bus.direct(sub._sub, self._on_msg)

    async def follow_attempts(self, nc: object) -> None:
        """Follow attempt changes, so waiters expect the current attempt's output only."""
        self._attempt_sub = await bus.subscribe_direct(
            nc, names.SUBJECTS_ATTEMPT_CHANGED, self._on_attempt)  # type: ignore[arg-type]

    def _on_attempt(self, msg: Msg) -> None:
        try:
            ch = AttemptChangedDecoder.decode(msg.data)
        except Exception:
            return
        waiters = self._waiters.get(ch.call_id)
        if waiters:
            waiters[:] = [(ch.attempt_token, f) for (_, f) in waiters]
        for g in self._groups.get(ch.call_id, ()):
            g.tokens[ch.call_id] = ch.attempt_token

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        self._subs.clear()
        for waiters in self._waiters.values():
            for _, fut in waiters:
                fut.cancel()
        self._waiters.clear()

    def register(self, call_id: str, attempt_token: str) -> asyncio.Future[Output]:
        """Register interest *before* the input is published, so no output can be missed."""
        fut: asyncio.Future[Output] = asyncio.get_running_loop().create_future()
        self._waiters[call_id].append((attempt_token, fut))
        return fut

    def register_group(self, tokens: dict[str, str]) -> Group:
        """Like :meth:`register`, for many calls at once; ``unregister_group`` after."""
        g = Group(tokens)
        groups = self._groups
        for call_id in tokens:
            lst = groups.get(call_id)
            if lst is None:
                groups[call_id] = [g]
            else:
                lst.append(g)
        return g

    def unregister_group(self, g: Group) -> None:
        groups = self._groups
        for call_id in g.tokens:
            lst = groups.get(call_id)
            if lst is None:
                continue
            if len(lst) == 1 and lst[0] is g:
                del groups[call_id]
            else:
                lst[:] = [x for x in lst if x is not g]
                if not lst:
                    del groups[call_id]

    def unregister(self, call_id: str, fut: asyncio.Future[Output]) -> None:
        waiters = self._waiters.get(call_id)
        if not waiters:
            return
        waiters[:] = [(t, f) for (t, f) in waiters if f is not fut]
        if not waiters:
            self._waiters.pop(call_id, None)

    def _on_msg(self, msg: Msg) -> None:
        try:
            out = OutputDecoder.decode(msg.data)
        except Exception as e:
            log.warning("output_undecodable", subject=msg.subject, error=repr(e))
            return
        if len(out.payload) <= RECENT_MAX_PAYLOAD:
            self._recent.put(out.call_id, out)
        else:
            self._big.put(out.call_id, True)
        for g in self._groups.get(out.call_id, ()):
            if g.tokens.get(out.call_id) == out.attempt_token:
                g.outputs[out.call_id] = out
            else:
                g.unsure[out.call_id] = out
            g.event.set()
        waiters = self._waiters.get(out.call_id)
        if not waiters:
            return
        for token, fut in list(waiters):
            if fut.done():
                continue
            if token != out.attempt_token:
                log.warning("stale_output_refused", call_id=out.call_id, attempt=out.attempt)
                continue
            fut.set_result(out)

    def recent(self, call_id: str) -> Output | None:
        """An output this process saw arrive (any attempt; the caller checks the token)."""
        return self._recent.get(call_id)

    def seen_big(self, call_id: str) -> bool:
        """Whether an output too big to keep in memory arrived for this call."""
        return call_id in self._big

    async def fetch(self, call_id: str, attempt: int) -> Output | None:
        """The stored output of one attempt, if there is one."""
        try:
            raw = await self.js.get_last_msg(
                names.outputs_stream(call_id), names.output_subject(call_id, attempt)
            )
        except nats.js.errors.NotFoundError:
            return None
        if raw.data is None:  # an empty message: no output
            return None
        return OutputDecoder.decode(raw.data)
