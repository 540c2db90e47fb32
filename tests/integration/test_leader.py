"""Two scheduler processes against one NATS: one decides; kill it, the other takes over."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from burst_core import bus, names
from burst_core.lease import Lease
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
from tests.scheduler_procs import SchedulerProcs, lease_holder

pytestmark = pytest.mark.integration


async def test_killed_leader_is_replaced_within_5s_without_double_placement(
    js: Any, agents: MakeAgent, scheduler_procs: SchedulerProcs  # noqa: F811
) -> None:
    agent = await agents("agent-1", cpu=64.0, memory_mb=65536, on_place="idle")
    procs = {"s-one": scheduler_procs.start("s-one"), "s-two": scheduler_procs.start("s-two")}
    leader = await eventually(lambda: lease_holder(js), timeout=30.0)
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
    assert await lease_holder(js) == follower
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
