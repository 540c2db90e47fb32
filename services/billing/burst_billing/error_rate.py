"""Error rates: ``function.error_rate_exceeded`` from the calls' outputs.

The lease holder reads ``BURST_OUTPUTS`` (outputs only, not generator items) with an
ordered consumer that starts one window back in stream time, so a new leader rebuilds the
window from the stream itself and nothing needs acking. Each call counts once (its first
output seen); ``failure``, ``timeout`` and ``internal`` count as failed, ``success`` as
not, and cancelled calls (``terminated``) not at all. An output names its container, not
its function: the container's function is learnt from the call's record once and cached.

Per function, the share of failed calls over the last ``window`` seconds (stream time) is
checked after every output and every ``interval``: when at least ``min_calls`` calls are in
the window and the share is at or above ``threshold``, the function has *crossed*. The
event fires once per crossing; the crossing ends when the share drops below the threshold
(or too few calls remain), and only a new crossing fires again. Whether a function is
crossed lives in ``burst_alert_state``, written after the event is queued (whose id comes
from the function and the stream sequence of its window's latest output), so a restart or
a new leader neither fires a crossing twice nor loses one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import time

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from burst_core import alerts, bus, ledger, logs, names
from burst_core.schemas import (
    AlertState,
    AlertStateDecoder,
    CallRecord,
    CallRecordDecoder,
    OutputDecoder,
    encode,
)

log = logs.get("burst.billing.error_rate")

KIND = "error_rate"
FAILED = frozenset({"failure", "timeout", "internal"})
COUNTED = FAILED | {"success"}
_CACHE_MAX = 100_000


class Window:
    """One function's calls over the window: (stream time, failed), oldest first."""

    def __init__(self) -> None:
        self.calls: collections.deque[tuple[float, bool]] = collections.deque()
        self.failed = 0
        #: Stream sequence of the latest output counted: names a crossing (with the
        #: function), the same on a replay.
        self.last_seq = 0

    def add(self, at: float, failed: bool, seq: int) -> None:
        self.calls.append((at, failed))
        self.failed += failed
        self.last_seq = seq

    def trim(self, before: float) -> None:
        while self.calls and self.calls[0][0] < before:
            _, failed = self.calls.popleft()
            self.failed -= failed

    @property
    def rate(self) -> float:
        return self.failed / len(self.calls) if self.calls else 0.0


class ErrorRateMonitor:
    """See the module docstring."""

    def __init__(self, js: JetStreamContext, *, window: float, threshold: float,
                 min_calls: int, interval: float) -> None:
        if not window > 0:
            raise ValueError(f"error_rate_window={window!r}: must be > 0 seconds")
        if not 0 < threshold <= 1:
            raise ValueError(f"error_rate_threshold={threshold!r}: must be a share in (0, 1]")
        if min_calls < 1:
            raise ValueError(f"error_rate_min_calls={min_calls!r}: must be at least 1")
        self.js = js
        self.window = window
        self.threshold = threshold
        self.min_calls = min_calls
        self.interval = interval
        self.windows: dict[str, Window] = {}
        self.crossed: dict[str, bool] = {}
        self._fn_of_container: dict[str, str] = {}
        self._calls_seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._sub: object | None = None
        self._lock = asyncio.Lock()
        self._state: KeyValue | None = None
        self._calls: KeyValue | None = None

    async def start(self) -> None:
        self._state = await self.js.key_value(names.KV_ALERT_STATE)
        self._calls = await self.js.key_value(names.KV_CALLS)
        for key, raw in (await alerts.kv_values(self._state, KIND)).items():
            with contextlib.suppress(msgspec.DecodeError):
                self.crossed[key[len(KIND) + 1:]] = AlertStateDecoder.decode(raw).active
        start = datetime.datetime.fromtimestamp(time.time() - self.window, datetime.UTC)
        # A callback subscription: each output costs a callback, not a timed wait (the
        # periodic pass has its own task; one lock keeps the two from interleaving).
        self._sub = await self.js.subscribe(
            names.SUBJECTS_OUTPUTS, stream=names.STREAM_OUTPUTS, ordered_consumer=True,
            cb=self._on_msg,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                  opt_start_time=start))
        self._task = asyncio.create_task(self._passes(), name="billing-error-rate")

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _on_msg(self, msg: Msg) -> None:
        async with self._lock:
            try:
                await self.on_output(msg)
            except Exception as e:  # one bad output must not stop the monitor
                log.warning("error_rate_output_failed", error=repr(e))

    async def _passes(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            async with self._lock:
                for fn_key in list(self.windows):
                    try:
                        await self._evaluate(fn_key, time.time())
                    except Exception as e:  # NATS trouble: the next pass repeats it
                        log.warning("error_rate_pass_failed", fn_key=fn_key, error=repr(e))

    async def on_output(self, msg: Msg) -> None:
        try:
            out = OutputDecoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        at = ledger.stream_time(msg.metadata.timestamp)
        if out.status not in COUNTED or out.call_id in self._calls_seen:
            return
        fn_key = await self._function_of(out.call_id, out.container_id)
        if fn_key is None:
            return
        self._calls_seen[out.call_id] = at
        self.windows.setdefault(fn_key, Window()).add(at, out.status in FAILED,
                                                      msg.metadata.sequence.stream)
        await self._evaluate(fn_key, at)

    async def _function_of(self, call_id: str, container_id: str) -> str | None:
        cached: str | None = self._fn_of_container.get(container_id) if container_id else None
        if cached is not None:
            return cached
        assert self._calls is not None
        raw, _ = await bus.kv_get(self._calls, call_id)
        if raw is None:
            return None  # expired with its result, or not a call of a function
        rec: CallRecord = CallRecordDecoder.decode(raw)
        fn_key: str = names.function_key(rec.workspace, rec.app, rec.function)
        if container_id:
            if len(self._fn_of_container) >= _CACHE_MAX:
                self._fn_of_container.clear()
            self._fn_of_container[container_id] = fn_key
        return fn_key

    async def _evaluate(self, fn_key: str, now: float) -> None:
        w = self.windows[fn_key]
        w.trim(now - self.window)
        if not w.calls:
            del self.windows[fn_key]
        self._forget_calls(now - self.window)
        over = len(w.calls) >= self.min_calls and w.rate >= self.threshold
        if over == self.crossed.get(fn_key, False):
            return
        ws, app, fn = names.split_function_key(fn_key)
        if over:
            data = {"workspace": ws, "app": app, "function": fn, "error_rate": round(w.rate, 4),
                    "failed": w.failed, "calls": len(w.calls), "window_seconds": self.window,
                    "threshold": self.threshold}
            log.warning("error_rate_exceeded", **data)
            await alerts.emit(self.js, ws, alerts.EVENT_ERROR_RATE,
                              alerts.event_id(KIND, fn_key, str(w.last_seq)), data)
        await self._save(fn_key, over, now, f"{w.failed}/{len(w.calls)}")

    async def _save(self, fn_key: str, over: bool, now: float, detail: str) -> None:
        assert self._state is not None
        key = names.alert_state_key(KIND, fn_key)
        await self._state.put(key, encode(AlertState(key=key, active=over, at=now,
                                                     detail=detail)))
        self.crossed[fn_key] = over

    def _forget_calls(self, before: float) -> None:
        """Drop call ids that left the window (dicts keep insertion order: oldest first)."""
        while self._calls_seen:
            call_id, at = next(iter(self._calls_seen.items()))
            if at >= before:
                return
            del self._calls_seen[call_id]
