"""Schedules against a real nats-server: every tick fires once, also across a SIGKILLed
leader.

A tick's call id carries the tick's time (its first 12 hex digits, in ms), so the calls a
schedule made say exactly which ticks fired: they must be consecutive periods, each once.
No agent runs here: inputs stay in the inputs stream, where they are counted too.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import msgspec
import nats.js.errors
import pytest

from burst.wire import Schedule
from burst_core import bus, calls, names
from burst_core.schemas import (
    BudgetState,
    CallRecordDecoder,
    ScheduleState,
    ScheduleStateDecoder,
    encode,
)
from burst_gateway.api_schedules import _view
from tests.integration.test_scheduler import (  # noqa: F401  (fixtures)
    MakeScheduler,
    deploy,
    eventually,
    fn,
    key,
    redis,
    scheduler,
)
from tests.scheduler_procs import SchedulerProcs, lease_holder

pytestmark = pytest.mark.integration

EVERY_SECOND = Schedule(period=1.0)


async def fired_ticks(js: Any, fn_key: str) -> list[int]:
    """Tick times (ms) of the calls ``fn_key``'s schedule made, sorted, duplicates kept."""
    kv = await js.key_value(names.KV_CALLS)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    ws, app, function = names.split_function_key(fn_key)
    for k in keys:
        raw, _ = await bus.kv_get(kv, k)
        rec = CallRecordDecoder.decode(raw) if raw else None
        if rec is not None and (rec.workspace, rec.app, rec.function) == (ws, app, function):
            out.append(round(calls.call_created_at(rec.call_id) * 1000))
    return sorted(out)


async def inputs_of(js: Any, fn_key: str) -> int:
    info = await js.stream_info(names.STREAM_INPUTS, subjects_filter=names.input_subject(fn_key))
    return int((info.state.subjects or {}).get(names.input_subject(fn_key), 0))


def assert_consecutive(ticks: list[int], period_ms: int) -> None:
    assert ticks, "no tick fired"
    assert len(set(ticks)) == len(ticks), f"a tick fired twice: {ticks}"
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert all(g == period_ms for g in gaps), f"a tick was lost: gaps {gaps}"


async def test_period_fires_every_tick_once(
    js: Any, scheduler: MakeScheduler  # noqa: F811
) -> None:
    await scheduler(schedule_interval=0.1)
    dep = await deploy(js, fn("tick", schedule=EVERY_SECOND), fn("plain"))
    fk = key("tick")
    await eventually(lambda: _count(js, fk, 3), timeout=15.0)
    ticks = await fired_ticks(js, fk)
    assert_consecutive(ticks, 1000)
    # Anchored at the deploy: the first tick is one period after it, never before.
    assert ticks[0] == int(dep.created_at * 1000) + 1000
    assert await inputs_of(js, fk) == len(ticks)
    assert await fired_ticks(js, key("plain")) == []
    state_kv = await js.key_value(names.KV_SCHEDULES)
    raw, _ = await bus.kv_get(state_kv, fk)
    assert raw is not None and ScheduleStateDecoder.decode(raw).last_tick_ms >= ticks[-1]


async def test_ephemeral_apps_fire_and_removed_apps_fire_nothing(
    js: Any, scheduler: MakeScheduler  # noqa: F811
) -> None:
    s = await scheduler(schedule_interval=0.1)
    dep = await deploy(js, fn("tick", schedule=EVERY_SECOND), app="eph")
    kv = await js.key_value(names.KV_DEPLOYMENTS)
    await kv.put(names.deployment_key("ws", "eph"),
                 encode(msgspec.structs.replace(dep, ephemeral=True)))
    await deploy(js, fn("tick", schedule=EVERY_SECOND), app="gone")
    await eventually(lambda: _count(js, key("tick", "gone"), 1), timeout=10.0)
    await kv.delete(names.deployment_key("ws", "gone"))
    await eventually(lambda: key("tick", "gone") not in s.state.functions)
    before = len(await fired_ticks(js, key("tick", "gone")))
    await asyncio.sleep(2.5)
    assert len(await fired_ticks(js, key("tick", "gone"))) == before
    # An ephemeral run's schedules fire while it runs (as `modal run`).
    assert await fired_ticks(js, key("tick", "eph")) != []
    # The removed app's schedule state is gone: a redeploy starts afresh.
    state_kv = await js.key_value(names.KV_SCHEDULES)
    await eventually(lambda: _missing(state_kv, key("tick", "gone")))


async def test_ticks_due_while_the_hard_budget_is_spent_are_skipped_and_recorded(
    js: Any, scheduler: MakeScheduler  # noqa: F811
) -> None:
    s = await scheduler(schedule_interval=0.1)
    dep = await deploy(js, fn("tick", schedule=EVERY_SECOND))
    fk = key("tick")
    await eventually(lambda: _count(js, fk, 2), timeout=10.0)

    # Billing marks the app's hard budget spent: its ticks are skipped, never fired.
    budget_kv = await js.key_value(names.KV_BUDGET_STATE)
    spent = BudgetState(workspace="ws", scope="app", period="2099-01", limit=1.0, hard=True,
                        spend=1.5, exceeded=True, exceeded_at=time.time())
    await budget_kv.put(names.budget_key("ws", "app"), encode(spent))
    await eventually(lambda: s.budget_stop.blocked(fk))
    await eventually(lambda: _skipped(js, fk, 1), timeout=10.0)
    calls_then = len(await fired_ticks(js, fk))
    await eventually(lambda: _skipped(js, fk, 3), timeout=10.0)
    assert len(await fired_ticks(js, fk)) == calls_then, "a tick fired while the budget was spent"
    st = await _state(js, fk)
    assert st.last_skipped_reason == "hard budget spent"
    assert st.last_skipped_at > spent.exceeded_at
    assert st.last_skipped_tick_ms > max(await fired_ticks(js, fk))
    assert st.last_tick_ms >= st.last_skipped_tick_ms  # given up, not due any more
    # The API (and `burst schedule list`) shows them; a skipped tick is not a fired one.
    view = _view(dep, dep.functions[0], st)
    assert view["skipped"] == st.skipped
    assert view["last_skipped_reason"] == "hard budget spent"
    assert view["last_skipped_tick_at"] == st.last_skipped_tick_ms / 1000
    assert view["fired"] == st.fired

    # The budget reopens: ticks fire again. Every tick fired once or was skipped once.
    await budget_kv.put(names.budget_key("ws", "app"),
                        encode(msgspec.structs.replace(spent, exceeded=False)))
    await eventually(lambda: _fired_after(js, fk, st.last_skipped_tick_ms / 1000 + 1.5),
                     timeout=10.0)
    end = await _state(js, fk)
    ticks = [t for t in await fired_ticks(js, fk) if t <= end.last_tick_ms]
    before = [t for t in ticks if t < end.last_skipped_tick_ms]
    after = [t for t in ticks if t > end.last_skipped_tick_ms]
    assert before + after == ticks
    assert_consecutive(before, 1000)
    assert_consecutive(after, 1000)
    assert after[0] - before[-1] == (end.skipped + 1) * 1000, (before, after, end)
    assert end.last_skipped_tick_ms == after[0] - 1000
    assert end.fired == len(ticks)
    assert _view(dep, dep.functions[0], None)["skipped"] == 0


async def _state(js: Any, fn_key: str) -> ScheduleState:
    raw, _ = await bus.kv_get(await js.key_value(names.KV_SCHEDULES), fn_key)
    assert raw is not None
    return ScheduleStateDecoder.decode(raw)


async def _skipped(js: Any, fn_key: str, n: int) -> bool:
    return (await _state(js, fn_key)).skipped >= n


async def _count(js: Any, fn_key: str, n: int) -> bool:
    return len(await fired_ticks(js, fn_key)) >= n


async def _missing(kv: Any, k: str) -> bool:
    raw, _ = await bus.kv_get(kv, k)
    return raw is None


async def test_no_tick_doubled_or_lost_when_the_leader_is_killed(
    js: Any, scheduler_procs: SchedulerProcs
) -> None:
    fast = {"BURST_SCHEDULE_INTERVAL": "0.1", "BURST_LEASE_TTL": "2"}
    procs = {name: scheduler_procs.start(name, **fast) for name in ("s-one", "s-two")}
    leader = await eventually(lambda: lease_holder(js), timeout=30.0)
    await deploy(js, fn("tick", schedule=EVERY_SECOND))
    fk = key("tick")
    await eventually(lambda: _count(js, fk, 3), timeout=20.0)

    # SIGKILL: the leader releases nothing; the follower takes over when the lease expires.
    procs[leader].send_signal(signal.SIGKILL)
    procs[leader].wait(10)
    killed_at = time.time()
    follower = "s-two" if leader == "s-one" else "s-one"
    await eventually(lambda: _held_by(js, follower), timeout=15.0)
    # Ticks keep coming, through the failover gap and after it.
    await eventually(lambda: _fired_after(js, fk, killed_at + 3.0), timeout=20.0)
    ticks = await fired_ticks(js, fk)
    assert_consecutive(ticks, 1000)
    assert await inputs_of(js, fk) == len(ticks)
    log = scheduler_procs.log(follower)
    assert "schedule_tick_fired" in log, log[-3000:]


async def _held_by(js: Any, instance: str) -> bool:
    return await lease_holder(js) == instance


async def _fired_after(js: Any, fn_key: str, t: float) -> bool:
    ticks = await fired_ticks(js, fn_key)
    return bool(ticks) and ticks[-1] / 1000 > t
