"""Schedules against a real nats-server: every tick fires once, also across a SIGKILLed
leader.

A tick's call id carries the tick's time (its first 12 hex digits, in ms), so the calls a
schedule made say exactly which ticks fired: they must be consecutive periods, each once.
No agent runs here: inputs stay in the inputs stream, where they are counted too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest

from burst._protocol import Schedule
from burst_core import bus, calls, names
from burst_core.schemas import CallRecordDecoder, ScheduleStateDecoder, encode
from tests.integration.test_leader import holder
from tests.integration.test_scheduler import (  # noqa: F401  (fixtures)
    MakeScheduler,
    deploy,
    eventually,
    fn,
    key,
    redis,
    scheduler,
)

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


async def test_ephemeral_apps_and_removed_apps_fire_nothing(
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
    assert await fired_ticks(js, key("tick", "eph")) == []
    # The removed app's schedule state is gone: a redeploy starts afresh.
    state_kv = await js.key_value(names.KV_SCHEDULES)
    await eventually(lambda: _missing(state_kv, key("tick", "gone")))


async def _count(js: Any, fn_key: str, n: int) -> bool:
    return len(await fired_ticks(js, fn_key)) >= n


async def _missing(kv: Any, k: str) -> bool:
    raw, _ = await bus.kv_get(kv, k)
    return raw is None


@pytest.fixture
async def scheduler_procs(
    nats_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(instance: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
        env.update(BURST_NATS_URL=nats_url, BURST_REDIS_URL=redis_url, BURST_INSTANCE=instance,
                   BURST_HOME=str(tmp_path), BURST_HEARTBEAT_TIMEOUT="30",
                   BURST_RECONCILE_INTERVAL="0.5", BURST_SERVICE_HEARTBEAT_INTERVAL="0.5",
                   BURST_SCHEDULE_INTERVAL="0.1", BURST_LEASE_TTL="2")
        with open(tmp_path / f"{instance}.log", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "burst_scheduler"], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


async def test_no_tick_doubled_or_lost_when_the_leader_is_killed(
    js: Any, scheduler_procs: Callable[[str], subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    procs = {"s-one": scheduler_procs("s-one"), "s-two": scheduler_procs("s-two")}
    leader = await eventually(lambda: holder(js), timeout=30.0)
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
    log = (tmp_path / f"{follower}.log").read_text()
    assert "schedule_tick_fired" in log, log[-3000:]


async def _held_by(js: Any, instance: str) -> bool:
    return await holder(js) == instance


async def _fired_after(js: Any, fn_key: str, t: float) -> bool:
    ticks = await fired_ticks(js, fn_key)
    return bool(ticks) and ticks[-1] / 1000 > t
