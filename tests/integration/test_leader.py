"""Two scheduler processes against one NATS: one decides; kill it, the other takes over."""

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

import pytest

from burst_core import bus, names
from burst_core.lease import Lease
from burst_core.schemas import LeaseRecordDecoder
from tests.integration.test_scheduler import (  # noqa: F401  (fixtures)
    MakeAgent,
    agents,
    deploy,
    eventually,
    fn,
    key,
)
from tests.integration.test_scheduler import (
    signal as accepted,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def schedulers(
    nats_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(instance: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
        env.update(BURST_NATS_URL=nats_url, BURST_REDIS_URL=redis_url, BURST_INSTANCE=instance,
                   BURST_HOME=str(tmp_path), BURST_HEARTBEAT_TIMEOUT="30",
                   BURST_RECONCILE_INTERVAL="0.5", BURST_SERVICE_HEARTBEAT_INTERVAL="0.5")
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


async def holder(js: Any) -> str | None:
    raw, _ = await bus.kv_get(await js.key_value(names.KV_LEASES), names.LEASE_SCHEDULER)
    if raw is None:
        return None
    rec = LeaseRecordDecoder.decode(raw)
    return rec.holder if rec.expires_at > time.time() else None


async def test_killed_leader_is_replaced_within_5s_without_double_placement(
    js: Any, agents: MakeAgent, schedulers: Callable[[str], subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    agent = await agents("agent-1", cpu=64.0, memory_mb=65536, on_place="idle")
    procs = {"s-one": schedulers("s-one"), "s-two": schedulers("s-two")}
    leader = await eventually(lambda: holder(js), timeout=30.0)
    follower = "s-two" if leader == "s-one" else "s-one"

    # Both replicas follow the cluster; only the leader decides: a burst of signals for
    # a new function gets exactly one container.
    await deploy(js, fn("f", scaledown_window=3600.0), fn("g", scaledown_window=3600.0))
    await asyncio.sleep(1.0)  # both replicas see the deployment
    await accepted(js, key("f"), n=20)
    await eventually(lambda: agent.placements, timeout=10.0)
    await asyncio.sleep(1.5)
    assert [p.function.name for p in agent.placements] == ["f"]

    procs[leader].send_signal(signal.SIGKILL)  # releases nothing
    procs[leader].wait(5)
    killed = time.monotonic()
    # Work for g waits in the stream: whoever decides next places its container.
    await bus.publish(js, names.input_subject(key("g")), b"input", msg_id="in-g")
    await eventually(lambda: len(agent.placements) == 2, timeout=15.0)
    took = time.monotonic() - killed
    assert await holder(js) == follower
    assert took < 5.0, f"takeover took {took:.2f} s"
    print(f"takeover took {took:.2f} s")

    await accepted(js, key("f"), n=10)
    await accepted(js, key("g"), n=10)
    await asyncio.sleep(2.0)
    assert sorted(p.function.name for p in agent.placements) == ["f", "g"]
    assert len((await agent.current()).allocations) == 2


async def test_lease_is_exclusive_and_passes_on_expiry(js: Any) -> None:
    kv = await js.key_value(names.KV_LEASES)
    one = Lease(kv, names.LEASE_SCHEDULER, "one", ttl=1.0)
    two = Lease(kv, names.LEASE_SCHEDULER, "two", ttl=1.0)
    assert await one.acquire() and not await two.acquire()
    assert one.held and not two.held
    await asyncio.sleep(1.2)  # one stops renewing (as a killed process would)
    assert not one.held
    assert await two.acquire() and not await one.acquire()
    await two.release()
    assert await one.acquire()
