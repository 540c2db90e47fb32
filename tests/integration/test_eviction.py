"""Idle containers yield to waiting work: the scheduler against a real nats-server.

Every function here keeps idle containers for ten minutes (``scaledown_window=600``), so a
waiting function that is placed within seconds was placed by eviction, not by scale-down.
Agents are the :class:`FakeAgent` harness of ``test_scheduler``: they obey a stop order
only while the container is still idle since the time the order names, as agents do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from burst_core import bus, names
from burst_core.schemas import FunctionWaitingDecoder, Resources, StopContainer
from tests.integration.test_scheduler import (
    APP,
    FakeAgent,
    MakeAgent,
    MakeScheduler,
    deploy,
    eventually,
    fn,
    key,
    signal,
    until_known,
)

# The fixtures of the scheduler tests (agents, scheduler, redis).
pytest_plugins = ["tests.integration.test_scheduler"]
pytestmark = pytest.mark.integration

WINDOW = 600.0  # ten minutes: only an eviction frees anything within a test
H100 = Resources(cpu=0.125, memory_mb=128, gpu_type="H100", gpu_count=1)


async def waiting_reason(js: Any, fn_key: str) -> str | None:
    kv = await js.key_value(names.KV_WAITING)
    raw, _ = await bus.kv_get(kv, fn_key)
    return FunctionWaitingDecoder.decode(raw).reason if raw is not None else None


async def wait_input(js: Any, fn_key: str, msg_id: str) -> None:
    """An input waiting in the stream (as the gateway stores it) and its signal."""
    await bus.publish(js, names.input_subject(fn_key), b"input", msg_id=msg_id)
    await signal(js, fn_key)


def placed(agent: FakeAgent, name: str) -> list[str]:
    return [p.container_id for p in agent.placements if p.function.name == name]


def seen_state(s: Any, cid: str) -> str | None:
    """The container's state in the scheduler's view (its agent's last heartbeat)."""
    view = s.state.live_views(time.time()).get(cid)
    return view[1].state if view is not None else None


def seen_idle(s: Any, cid: str) -> bool:
    return seen_state(s, cid) == "idle"


def evictions(agent: FakeAgent) -> list[StopContainer]:
    return [o for _, o in agent.stops if o.reason == "evicted"]


async def test_idle_gpu_container_yields_to_a_waiting_gpu_function(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    # One declared GPU; the agent acts on stops by hand here, so the reason can be read
    # while the eviction is under way.
    agent = await agents("gpu-1", gpus=[(0, "H100")], obey_stops=False)
    s = await scheduler()
    await deploy(js, fn("a", resources=H100, scaledown_window=WINDOW),
                 fn("b", resources=H100, scaledown_window=WINDOW))
    await until_known(s, key("a"), key("b"))
    await signal(js, key("a"))
    await eventually(lambda: placed(agent, "a"))
    [a_cid] = placed(agent, "a")
    await eventually(lambda: seen_idle(s, a_cid))

    asked = time.monotonic()
    await wait_input(js, key("b"), "in-b")
    await eventually(lambda: evictions(agent), timeout=5.0)
    [order] = evictions(agent)
    assert order.container_id == a_cid
    assert order.if_idle_since == agent.views[a_cid].idle_since  # refused if it took work
    reason = await eventually(lambda: waiting_reason(js, key("b")), timeout=3.0)
    assert reason == f"evicting 1 idle container of {APP}/a to make room"
    assert not placed(agent, "b")  # the GPU is still held until the container is gone

    await agent.remove(a_cid)  # the agent stopped it and released its claim
    await eventually(lambda: placed(agent, "b"), timeout=5.0)
    assert time.monotonic() - asked < 30.0  # far below the 600 s window
    [b_order] = [p for p in agent.placements if p.function.name == "b"]
    assert b_order.gpu_indices == [0]
    assert list((await agent.current()).allocations) == [b_order.container_id]
    await eventually(lambda: _is_none(waiting_reason(js, key("b"))), timeout=3.0)
    assert await waiting_reason(js, key("a")) is None  # only warm: never waiting


async def _is_none(value: Any) -> bool:
    return await value is None


async def test_least_recently_used_idle_cpu_containers_make_room(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    # Two CPU slots, both held by idle containers of a; b needs one slot.
    agent = await agents("cpu-2", cpu=2.0, memory_mb=8192, on_place="busy")
    s = await scheduler()
    one_cpu = Resources(cpu=1.0, memory_mb=512)
    await deploy(js, fn("a", resources=one_cpu, scaledown_window=WINDOW),
                 fn("b", resources=one_cpu, scaledown_window=WINDOW))
    await until_known(s, key("a"), key("b"))
    await signal(js, key("a"))
    await eventually(lambda: len(placed(agent, "a")) == 1)
    await asyncio.sleep(0.3)  # the first is seen busy: more work gets a second container
    await signal(js, key("a"))
    await eventually(lambda: len(placed(agent, "a")) == 2)
    older, newer = placed(agent, "a")
    now = time.time()
    agent.set_idle(newer, key("a"), since=now - 5.0)  # used least recently
    agent.set_idle(older, key("a"), since=now)
    await eventually(lambda: seen_idle(s, older) and seen_idle(s, newer))

    asked = time.monotonic()
    await wait_input(js, key("b"), "in-b")
    await eventually(lambda: placed(agent, "b"), timeout=10.0)
    assert time.monotonic() - asked < 30.0
    assert [o.container_id for o in evictions(agent)] == [newer]  # one stop was enough
    allocations = (await agent.current()).allocations
    assert sorted(allocations) == sorted([older, *placed(agent, "b")])
    assert s.info()["evicted"] == "1"


async def test_min_containers_and_busy_containers_are_never_evicted(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("gpu-1", gpus=[(0, "H100")], on_place="idle")
    s = await scheduler()
    await deploy(js, fn("kept", resources=H100, min_containers=1, scaledown_window=WINDOW),
                 fn("b", resources=H100, scaledown_window=WINDOW))
    await eventually(lambda: placed(agent, "kept"), timeout=5.0)  # its minimum, unasked
    [kept] = placed(agent, "kept")
    await eventually(lambda: seen_idle(s, kept))

    await wait_input(js, key("b"), "in-b")
    reason = await eventually(lambda: waiting_reason(js, key("b")), timeout=5.0)
    assert reason == (f"waiting for 1×H100: none free; idle containers of {APP}/kept are "
                      "kept for their min_containers")
    await asyncio.sleep(1.5)  # several reconcile passes: still nothing stopped
    assert agent.stops == [] and not placed(agent, "b")

    # The same GPU held by a busy container: never stopped either.
    agent.set_busy(kept, key("kept"))
    await eventually(lambda: seen_state(s, kept) == "busy")
    await deploy(js, fn("kept", resources=H100, scaledown_window=WINDOW),
                 fn("b", resources=H100, scaledown_window=WINDOW))
    await eventually(lambda: s.state.function(key("kept")).spec.min_containers == 0)
    await asyncio.sleep(1.5)
    assert agent.stops == [] and not placed(agent, "b")
    assert await waiting_reason(js, key("b")) == "waiting for 1×H100: none free"

    # Idle again (and no longer kept): it yields.
    agent.set_idle(kept, key("kept"))
    await eventually(lambda: placed(agent, "b"), timeout=10.0)
    assert [o.container_id for o in evictions(agent)] == [kept]


class BusyOnStop(FakeAgent):
    """The container takes an input just before the stop order arrives, once."""

    took_work = False

    async def _on_order(self, msg: Any) -> None:
        from burst_core.schemas import AgentOrderDecoder

        order = AgentOrderDecoder.decode(msg.data)
        if isinstance(order, StopContainer) and not self.took_work:
            self.took_work = True
            view = self.views[order.container_id]
            self.set_busy(order.container_id, view.fn_key)
        await super()._on_order(msg)


async def test_a_container_that_took_work_is_kept_and_asked_again_once_idle(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = BusyOnStop(js, "gpu-1", gpus=[(0, "H100")], on_place="idle")
    await agent.start()
    try:
        s = await scheduler(stop_order_retry=30.0)
        await deploy(js, fn("a", resources=H100, scaledown_window=WINDOW),
                     fn("b", resources=H100, scaledown_window=WINDOW))
        await until_known(s, key("a"), key("b"))
        await signal(js, key("a"))
        await eventually(lambda: placed(agent, "a"))
        [a_cid] = placed(agent, "a")
        await eventually(lambda: seen_idle(s, a_cid))

        await wait_input(js, key("b"), "in-b")
        await eventually(lambda: evictions(agent), timeout=5.0)
        await asyncio.sleep(1.5)  # refused: its input runs on, nothing is placed over it
        assert a_cid in (await agent.current()).allocations and not placed(agent, "b")
        assert len(evictions(agent)) == 1

        # Done with that input: idle since a new time, so it is asked again and yields
        # (well before the 30 s after which an unanswered order would be repeated).
        agent.set_idle(a_cid, key("a"))
        await eventually(lambda: placed(agent, "b"), timeout=10.0)
        orders = evictions(agent)
        assert len(orders) == 2 and orders[1].container_id == a_cid
        assert orders[1].if_idle_since != orders[0].if_idle_since
    finally:
        await agent.stop()


async def test_a_function_that_is_only_warm_is_not_waiting(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    # One CPU slot: a's second container finds no room and a is marked waiting; once its
    # queue is empty, the reason goes.
    agent = await agents("cpu-1", cpu=1.0, on_place="busy")
    s = await scheduler()
    await deploy(js, fn("a", resources=Resources(cpu=1.0), scaledown_window=WINDOW))
    await until_known(s, key("a"))
    await signal(js, key("a"))
    await eventually(lambda: placed(agent, "a"))
    await asyncio.sleep(0.3)
    await wait_input(js, key("a"), "in-a")  # saturated: wants another, none fits
    reason = await eventually(lambda: waiting_reason(js, key("a")), timeout=5.0)
    assert reason == "waiting for 1 CPU and 128 MiB: none free"
    await asyncio.sleep(1.0)  # reconcile passes while the input is queued: still waiting
    assert await waiting_reason(js, key("a")) == reason
    # The busy container ran the input (acked: gone from the stream) and is idle now.
    await js.purge_stream(names.STREAM_INPUTS, subject=names.input_subject(key("a")))
    [cid] = placed(agent, "a")
    agent.set_idle(cid, key("a"))
    await eventually(lambda: _is_none(waiting_reason(js, key("a"))), timeout=5.0)
    assert s.state.function(key("a")) is not None
