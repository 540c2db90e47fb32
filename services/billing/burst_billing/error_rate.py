"""Error rates: ``function.error_rate_exceeded`` from the agents' metering records.

Each metering record counts the calls its container answered in its interval by outcome
(cancelled calls not at all), so the monitor costs per container and interval, not per
call. The lease holder reads ``BURST_METERING`` every ``poll`` with its own ephemeral
consumer that starts one ``window`` back; per function, when at least ``min_calls`` calls
are in the window and the failed share is at or above ``threshold``, the function has
crossed and the event fires once per crossing.

Invariants: a record (``(container_id, interval)``) counts once, even stored twice; a
lost or skipping consumer is replaced from the sequence after the last record taken; the
crossed state is kept in ``burst_alert_state`` after the event is queued (its id from the
function and the window's latest sequence), so a restart or a new leader neither fires a
crossing twice nor loses one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import secrets
import time

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from burst_core import alerts, ledger, logs, names
from burst_core.schemas import AlertState, AlertStateDecoder, MeteringRecord, encode
from burst_core.service import cancel_and_wait

log = logs.get("burst.billing.error_rate")

KIND = "error_rate"
#: Records per fetch (a few hundred bytes each).
BATCH = 256
#: Longest a fetch waits when no record is there (the loop sleeps ``poll`` after it).
_FETCH_WAIT = 0.05
#: Seconds without a fetch after which the server deletes a monitor's consumer.
_IDLE_EXPIRY = 60.0


class Window:
    """One function's counts over the window: (stream time, calls, failed) per record,
    oldest first, and their sums."""

    def __init__(self) -> None:
        self.records: collections.deque[tuple[float, int, int]] = collections.deque()
        self.calls = 0
        self.failed = 0
        #: Stream sequence of the latest record counted: names a crossing (with the
        #: function), the same on a replay.
        self.last_seq = 0

    def add(self, at: float, succeeded: int, failed: int, seq: int) -> None:
        self.records.append((at, succeeded + failed, failed))
        self.calls += succeeded + failed
        self.failed += failed
        self.last_seq = seq

    def trim(self, before: float) -> None:
        while self.records and self.records[0][0] < before:
            _, calls, failed = self.records.popleft()
            self.calls -= calls
            self.failed -= failed

    @property
    def rate(self) -> float:
        return self.failed / self.calls if self.calls else 0.0


class ErrorRateMonitor:
    """See the module docstring."""

    def __init__(self, js: JetStreamContext, *, window: float, threshold: float,
                 min_calls: int, interval: float, poll: float = 0.25) -> None:
        if not window > 0:
            raise ValueError(f"error_rate_window={window!r}: must be > 0 seconds")
        if not 0 < threshold <= 1:
            raise ValueError(f"error_rate_threshold={threshold!r}: must be a share in (0, 1]")
        if min_calls < 1:
            raise ValueError(f"error_rate_min_calls={min_calls!r}: must be at least 1")
        if not poll > 0:
            raise ValueError(f"error_rate_poll={poll!r}: must be > 0 seconds")
        self.js = js
        self.window = window
        self.threshold = threshold
        self.min_calls = min_calls
        self.interval = interval
        self.poll = poll
        self.windows: dict[str, Window] = {}
        self.crossed: dict[str, bool] = {}
        #: Identities ("container_id:interval") of the records counted in the window, with
        #: their stream time, oldest first: a record stored twice counts once.
        self._seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        self._consumer = ""
        #: Stream sequence of the last record taken (0: none yet); a replacement consumer
        #: starts right after it.
        self._seq = 0
        #: Delivery sequence of the last message from the current consumer: nothing is
        #: acked, so nothing is redelivered, and a jump means deliveries were lost.
        self._delivered = 0
        self._state: KeyValue | None = None

    async def start(self) -> None:
        self._state = await self.js.key_value(names.KV_ALERT_STATE)
        for key, raw in (await alerts.kv_values(self._state, KIND)).items():
            with contextlib.suppress(msgspec.DecodeError):
                self.crossed[key[len(KIND) + 1:]] = AlertStateDecoder.decode(raw).active
        await self._subscribe()
        self._task = asyncio.create_task(self._run(), name="billing-error-rate")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self._unsubscribe()

    async def _subscribe(self) -> None:
        """A new consumer: right after the last record taken, or one window back."""
        if self._seq:
            where = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                   opt_start_seq=self._seq + 1)
        else:
            start = datetime.datetime.fromtimestamp(time.time() - self.window, datetime.UTC)
            where = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                   opt_start_time=start)
        name = names.error_rate_consumer(secrets.token_hex(6))
        # In memory and R1: losing it (a nats-server restart) only costs a new one, and
        # the server keeps no state on disk for the records read. Idle (no fetch) for
        # _IDLE_EXPIRY, as when this process died, the server deletes it.
        where.name = name
        where.filter_subject = names.SUBJECTS_METERING
        where.ack_policy = AckPolicy.NONE
        where.mem_storage = True
        where.num_replicas = 1
        where.inactive_threshold = max(_IDLE_EXPIRY, 4 * self.poll)
        await self.js.add_consumer(names.STREAM_METERING, where)
        self._consumer = name
        self._psub = await self.js.pull_subscribe_bind(name, names.STREAM_METERING)
        self._delivered = 0

    async def _unsubscribe(self) -> None:
        psub, self._psub = self._psub, None
        if psub is None:
            return
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        try:
            await asyncio.wait_for(
                self.js.delete_consumer(names.STREAM_METERING, self._consumer), 2.0)
        except nats.js.errors.NotFoundError:
            pass
        except Exception as e:  # NATS trouble: the server deletes it once idle
            log.info("error_rate_consumer_left", consumer=self._consumer, error=repr(e))

    async def _run(self) -> None:
        """Read every ``poll`` and pass over every window every ``interval``, in one task
        (so the two never interleave)."""
        loop = asyncio.get_running_loop()
        next_read, next_pass = loop.time(), loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, min(next_read, next_pass) - loop.time()))
            if loop.time() >= next_read:
                await self._read()
                next_read = loop.time() + self.poll
            if loop.time() >= next_pass:
                await self._pass()
                next_pass = loop.time() + self.interval

    async def _read(self) -> None:
        """Take every record there is, a batch at a time. Never raises: on NATS trouble,
        or a lost delivery, the consumer is dropped and the next round starts a new one
        right after the last record taken."""
        try:
            if self._psub is None:
                await self._subscribe()
            assert self._psub is not None
            while True:
                # With records there, fetch returns at once with up to BATCH of them; only
                # with none does it wait, _FETCH_WAIT at most, and then times out.
                try:
                    msgs = await self._psub.fetch(BATCH, timeout=_FETCH_WAIT)
                except (nats.errors.TimeoutError, TimeoutError):
                    return
                for msg in msgs:
                    if not await self._take(msg):
                        await self._unsubscribe()
                        return
                if len(msgs) < BATCH:
                    return
        except Exception as e:
            log.warning("error_rate_read_failed", consumer=self._consumer, after=self._seq,
                        error=repr(e))
            await self._unsubscribe()

    async def _take(self, msg: Msg) -> bool:
        """Count one delivered record; False when the consumer must be replaced (a delivery
        was lost, or NATS trouble while counting this one, which is then read again)."""
        seq = msg.metadata.sequence
        if seq.consumer != self._delivered + 1:
            log.warning("error_rate_deliveries_lost", consumer=self._consumer,
                        expected=self._delivered + 1, got=seq.consumer, after=self._seq)
            return False
        self._delivered = seq.consumer
        if seq.stream <= self._seq:
            return True  # taken before
        try:
            await self.on_record(msg)
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("error_rate_record_failed", seq=seq.stream, error=repr(e))
            return False
        except Exception as e:  # one bad record must not stop the monitor: skipped
            log.warning("error_rate_record_skipped", seq=seq.stream, error=repr(e))
        self._seq = seq.stream
        return True

    async def _pass(self) -> None:
        for fn_key in list(self.windows):
            try:
                await self._evaluate(fn_key, time.time())
            except Exception as e:  # NATS trouble: the next pass repeats it
                log.warning("error_rate_pass_failed", fn_key=fn_key, error=repr(e))

    async def on_record(self, msg: Msg) -> None:
        try:
            rec = ledger.MeteringMessageDecoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if not isinstance(rec, MeteringRecord) or rec.succeeded + rec.failed <= 0:
            return  # an idle interval (most records), or a lost agent
        at = ledger.stream_time(msg.metadata.timestamp)
        identity = f"{rec.container_id}:{rec.interval}"
        if identity in self._seen:
            return
        self._seen[identity] = at
        fn_key = names.function_key(rec.workspace, rec.app, rec.function)
        self.windows.setdefault(fn_key, Window()).add(
            at, max(0, rec.succeeded), max(0, rec.failed), msg.metadata.sequence.stream)
        await self._evaluate(fn_key, at)

    async def _evaluate(self, fn_key: str, now: float) -> None:
        w = self.windows[fn_key]
        w.trim(now - self.window)
        if not w.records:
            del self.windows[fn_key]
        self._forget_records(now - self.window)
        over = w.calls >= self.min_calls and w.rate >= self.threshold
        if over == self.crossed.get(fn_key, False):
            return
        ws, app, fn = names.split_function_key(fn_key)
        if over:
            data = {"workspace": ws, "app": app, "function": fn, "error_rate": round(w.rate, 4),
                    "failed": w.failed, "calls": w.calls, "window_seconds": self.window,
                    "threshold": self.threshold}
            log.warning("error_rate_exceeded", **data)
            await alerts.emit(self.js, ws, alerts.EVENT_ERROR_RATE,
                              alerts.event_id(KIND, fn_key, str(w.last_seq)), data)
        await self._save(fn_key, over, now, f"{w.failed}/{w.calls}")

    async def _save(self, fn_key: str, over: bool, now: float, detail: str) -> None:
        assert self._state is not None
        key = names.alert_state_key(KIND, fn_key)
        await self._state.put(key, encode(AlertState(key=key, active=over, at=now,
                                                     detail=detail)))
        self.crossed[fn_key] = over

    def _forget_records(self, before: float) -> None:
        """Drop identities that left the window (dicts keep insertion order: oldest first)."""
        while self._seen:
            identity, at = next(iter(self._seen.items()))
            if at >= before:
                return
            del self._seen[identity]
