"""Firing schedules: each tick of a deployed function's schedule becomes one call, once.

Runs on the deciding scheduler only (the lease holder), every ``schedule_interval``. A
schedule's progress lives in KV ``burst_schedules`` (:class:`ScheduleState`, by fn_key),
not in this process, so a new leader continues where the last one stopped.

Exactly once. A tick ``T`` of function ``F`` is the call whose id is derived from
``F:T`` (:func:`calls.new_call_id` with a key). Firing it creates that call's record
(create-only) and publishes its input with the input id as ``Nats-Msg-Id``; only then is
``last_tick_ms`` advanced to ``T`` by compare-and-set. A leader killed between the two
(it releases nothing) leaves ``last_tick_ms`` behind: its successor fires ``T`` again,
finds the record, and the republished input is dropped as a duplicate. Two replicas that
both believe they lead (for at most the lease's clock margin) fire the same ids too.

Missed ticks. Ticks that came due at most ``schedule_catchup`` seconds ago are fired late
(a leader change takes seconds). Older ones (the cluster was down) and those that came
due while the schedule was paused are recorded as ``missed`` ranges, not fired; a resume
with backfill fires each of them once (at most ``schedule_backfill_max``), oldest first.

Spent budgets. A tick that comes due while a hard budget covering the function is spent
is skipped: given up like a fired one (``last_tick_ms`` passes it) but never fired, and
counted in the state (``skipped``, with the last one's time, tick and reason), so
``burst schedule list`` shows it. A backfill waits instead: while the budget is spent it
fires nothing and stays pending, its missed ticks kept.

An ephemeral app's schedules fire while it runs (``burst run``, ``with app.run():``), as in
Modal; each run has its own state (its functions' keys name the run's id). A removed
app's (or function's) schedule state is deleted, so a later deploy starts afresh.
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Callable

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import bus, calls, logs, names
from burst_core import schedules as ticks
from burst_core.schemas import ScheduleState, ScheduleStateDecoder, encode
from burst_scheduler.settings import SchedulerSettings
from burst_scheduler.state import ClusterState, FunctionRef

log = logs.get("burst.scheduler.schedules")

#: A tick is a call with no arguments: ``((), {})`` as the SDK would pickle it.
NO_ARGS = pickle.dumps(((), {}), protocol=pickle.HIGHEST_PROTOCOL)
#: Most missed ranges kept per schedule (the oldest are dropped).
MAX_MISSED_RANGES = 32
#: Why a tick was skipped (recorded in :class:`ScheduleState`).
SKIPPED_BUDGET = "hard budget spent"


def scheduled(ref: FunctionRef) -> bool:
    return ref.spec.schedule is not None


class Ticker:
    """Fires due ticks of every scheduled function; see the module docstring."""

    def __init__(self, js: JetStreamContext, nc: NATS, state: ClusterState,
                 settings: SchedulerSettings, blocked: Callable[[str], bool]) -> None:
        self.js = js
        self.nc = nc
        self.state = state
        self.settings = settings
        self.blocked = blocked
        self.fired = 0
        self._kv: KeyValue | None = None
        self._calls_kv: KeyValue | None = None
        self._tombstones: set[str] = set()  # schedule states known deleted

    async def _buckets(self) -> tuple[KeyValue, KeyValue]:
        if self._kv is None or self._calls_kv is None:
            self._kv = await bus.ensure_kv(self.js, names.KV_SCHEDULES)
            self._calls_kv = await self.js.key_value(names.KV_CALLS)
        return self._kv, self._calls_kv

    # ---- one pass --------------------------------------------------------------------
    async def run_once(self, now: float | None = None) -> int:
        """Fire every due tick; drop state of schedules no longer deployed. Returns fired."""
        kv, _ = await self._buckets()
        fired = 0
        wanted = {k: ref for k, ref in self.state.functions.items() if scheduled(ref)}
        for fn_key in sorted(wanted):
            try:
                fired += await self._step(kv, wanted[fn_key], now)
            except Exception:
                log.exception("schedule_step_failed", fn_key=fn_key)
        await self._sweep(kv, wanted)
        return fired

    async def _sweep(self, kv: KeyValue, wanted: dict[str, FunctionRef]) -> None:
        # Our view holds every deployment (the watch replays them before deciding starts):
        # state of a schedule not in it belongs to a removed app or function.
        # A deleted key stays listed (its tombstone): looked up once, then skipped until
        # its function is deployed again.
        for key in await bus.kv_keys(kv):
            if key in wanted:
                self._tombstones.discard(key)
                continue
            if key in self._tombstones:
                continue
            if (await bus.kv_get(kv, key))[0] is not None:
                await kv.delete(key)
                log.info("schedule_removed", fn_key=key)
            self._tombstones.add(key)

    async def _step(self, kv: KeyValue, ref: FunctionRef, now: float | None) -> int:
        sched = ref.spec.schedule
        assert sched is not None
        fn_key = ref.fn_key
        raw, rev = await bus.kv_get(kv, fn_key)
        now_s = time.time() if now is None else now
        now_ms = int(now_s * 1000)
        if raw is None:
            # First sight: ticks count from the deploy (a Period's anchor), never before.
            start = min(now_ms, int(ref.deployment.created_at * 1000))
            try:
                await kv.create(fn_key, encode(ScheduleState(fn_key=fn_key, last_tick_ms=start)))
                log.info("schedule_started", fn_key=fn_key, schedule=ticks.describe(sched))
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            return 0
        # None once a compare-and-set finds the state gone (the schedule was removed).
        st: ScheduleState | None
        st = ScheduleStateDecoder.decode(raw)
        if st.paused:
            return 0
        if st.resumed_at:
            # Ticks that came due while paused are missed (fired only by a backfill).
            def resume(s: ScheduleState) -> ScheduleState:
                last = ticks.latest_tick(sched, s.last_tick_ms, int(s.resumed_at * 1000))
                if last is None:
                    return _replace(s, resumed_at=0.0)
                gap = [ticks.next_tick(sched, s.last_tick_ms), last]
                return _replace(s, resumed_at=0.0, last_tick_ms=last,
                                missed=[*s.missed, gap][-MAX_MISSED_RANGES:])

            await self._update(kv, fn_key, resume)
            return 0
        fired = 0
        # Ticks too old to fire late: the cluster was down. Recorded, not fired.
        cutoff = now_ms - int(self.settings.schedule_catchup * 1000)
        stale = ticks.latest_tick(sched, st.last_tick_ms, cutoff)
        if stale is not None:
            first = ticks.next_tick(sched, st.last_tick_ms)
            log.warning("schedule_ticks_missed", fn_key=fn_key, first=first, last=stale)
            st = await self._update(kv, fn_key, lambda s: _replace(
                s, last_tick_ms=max(s.last_tick_ms, stale),
                missed=[*s.missed, [first, stale]][-MAX_MISSED_RANGES:]))
            if st is None or st.paused:
                return 0
        for t in list(ticks.ticks(sched, st.last_tick_ms, now_ms)):
            if await self._fire(ref, t, now_s):
                st = await self._update(kv, fn_key, functools.partial(_fired, tick_ms=t,
                                                                      now=now_s))
                fired += 1
            else:
                st = await self._update(kv, fn_key, functools.partial(
                    _skipped, tick_ms=t, now=now_s, reason=SKIPPED_BUDGET))
            if st is None or st.paused:
                return fired
        if st is not None and st.backfill:
            fired += await self._backfill(kv, ref, st, now_s)
        return fired

    async def _backfill(self, kv: KeyValue, ref: FunctionRef, st: ScheduleState,
                        now_s: float) -> int:
        sched = ref.spec.schedule
        assert sched is not None
        if self.blocked(ref.fn_key):
            return 0  # a spent budget: the backfill waits, its missed ticks kept
        fired = 0
        budget = self.settings.schedule_backfill_max
        for first, last in list(st.missed):
            t = first
            while t <= last and fired < budget:
                if not await self._fire(ref, t, now_s):
                    return fired  # a spent budget: the rest waits, still missed and pending
                fired += 1
                nxt = ticks.next_tick(sched, t)
                # Progress is recorded per tick: a successor resumes after the last one.
                await self._update(kv, ref.fn_key, functools.partial(
                    _backfilled, tick_ms=t, next_ms=nxt, now=now_s))
                t = nxt
        if fired >= budget:
            log.warning("schedule_backfill_truncated", fn_key=ref.fn_key, limit=budget)
        await self._update(kv, ref.fn_key, lambda s: _replace(s, backfill=False, missed=[]))
        log.info("schedule_backfilled", fn_key=ref.fn_key, ticks=fired)
        return fired

    async def _fire(self, ref: FunctionRef, tick_ms: int, now: float) -> bool:
        """Make tick ``tick_ms``'s call (once); False when skipped for a spent budget."""
        if self.blocked(ref.fn_key):
            log.warning("schedule_tick_skipped", fn_key=ref.fn_key, tick=tick_ms,
                        reason=SKIPPED_BUDGET)
            return False
        _, calls_kv = await self._buckets()
        dep = ref.deployment
        rec, inp = calls.build(dep.workspace, dep.app, ref.spec.name, dep.deployment_id,
                               NO_ARGS, "pickle", now, call_id=_call_id(ref.fn_key, tick_ms))
        made = await calls.create_once(self.js, self.nc, calls_kv, rec, inp,
                                       self.settings.schedule_dedupe_window)
        self.fired += made
        log.info("schedule_tick_fired", fn_key=ref.fn_key, tick=tick_ms, call_id=rec.call_id,
                 late_by=round(now - tick_ms / 1000, 3), again=not made)
        return True

    async def _update(self, kv: KeyValue, fn_key: str,
                      change: Callable[[ScheduleState], ScheduleState]) -> ScheduleState | None:
        """Apply ``change`` by compare-and-set (re-read on conflict); the state written."""
        out: list[ScheduleState] = []

        def mutate(raw: bytes | None) -> bytes | None:
            out.clear()
            if raw is None:
                return None
            new = change(ScheduleStateDecoder.decode(raw))
            out.append(new)
            return encode(new)

        value, _ = await bus.kv_cas(kv, fn_key, mutate)
        return out[0] if value is not None else None


def _call_id(fn_key: str, tick_ms: int) -> str:
    return calls.new_call_id(tick_ms / 1000, key=f"{fn_key}:{tick_ms}")


def _fired(s: ScheduleState, tick_ms: int, now: float) -> ScheduleState:
    return _replace(s, last_tick_ms=max(s.last_tick_ms, tick_ms), fired=s.fired + 1,
                    last_fired_at=now, last_call_id=_call_id(s.fn_key, tick_ms))


def _skipped(s: ScheduleState, tick_ms: int, now: float, reason: str) -> ScheduleState:
    return _replace(s, last_tick_ms=max(s.last_tick_ms, tick_ms), skipped=s.skipped + 1,
                    last_skipped_at=now, last_skipped_tick_ms=tick_ms,
                    last_skipped_reason=reason)


def _backfilled(s: ScheduleState, tick_ms: int, next_ms: int, now: float) -> ScheduleState:
    return _replace(s, fired=s.fired + 1, last_fired_at=now,
                    missed=_without_through(s.missed, tick_ms, next_ms))


def _replace(s: ScheduleState, **changes: object) -> ScheduleState:
    return msgspec.structs.replace(s, **changes)


def _without_through(missed: list[list[int]], tick_ms: int, next_ms: int) -> list[list[int]]:
    """``missed`` without every tick up to and including ``tick_ms`` (whose successor on
    the schedule is ``next_ms``)."""
    out = []
    for first, last in missed:
        if last <= tick_ms:
            continue
        out.append([next_ms if first <= tick_ms else first, last])
    return out
