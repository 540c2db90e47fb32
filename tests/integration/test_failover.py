"""Lost agents against a real nats-server and redis-server (agents simulated by FakeAgent)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from burst_core import bus, names
from burst_core.schemas import AgentLostDecoder, AgentRecordDecoder, Resources, encode
from tests.integration.test_scheduler import (  # noqa: F401  (fixtures)
    MakeAgent,
    MakeScheduler,
    agents,
    deploy,
    eventually,
    fn,
    key,
    redis,
    scheduler,
    signal,
    until_known,
)

pytestmark = pytest.mark.integration


async def lost_events(js: Any) -> list[Any]:
    sub = await js.subscribe(names.SUBJECTS_AGENT_LOST, stream=names.STREAM_CONTROL,
                             ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                return out
            out.append(AgentLostDecoder.decode(msg.data))
    finally:
        await sub.unsubscribe()


async def test_lost_agent_is_released_announced_and_replaced(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler  # noqa: F811
) -> None:
    gpu = [(0, "H100")]
    first = await agents("a-first", gpus=gpu, on_place="busy")
    s = await scheduler()
    await deploy(js, fn("f", resources=Resources(gpu_type="H100")))
    await until_known(s, key("f"))
    # An input is waiting (in flight on the container, as far as the stream knows).
    await bus.publish(js, names.input_subject(key("f")), b"input", msg_id="in-1")
    await signal(js, key("f"))
    await eventually(lambda: first.placements)
    lost_cid = first.placements[0].container_id
    second = await agents("b-second", gpus=gpu, on_place="busy")
    await asyncio.sleep(0.5)
    assert second.placements == []  # the only H100 function has its container

    await first.stop()  # the machine dies: no more heartbeats, nothing released
    # heartbeat_timeout is 1 s: marked lost, released, and replaced on the other agent.
    await eventually(lambda: second.placements, timeout=6.0)

    async def marked() -> Any:
        rec = await first.current()
        return rec if rec.lost_at else None

    record = await eventually(marked, timeout=6.0)
    # Read once the agent is lost: a beat sent just before the stop may still have been
    # on its way to the scheduler right after it.
    last_beat = s.state.heartbeats["a-first"].at
    assert record.lost_at > last_beat + 1.0
    assert record.allocations == {}
    assert s.state.agents["a-first"].lost_at == record.lost_at
    events = await lost_events(js)
    assert [(e.agent_id, e.container_ids, e.last_heartbeat_at) for e in events] == [
        ("a-first", [lost_cid], last_beat)
    ]
    await asyncio.sleep(1.0)  # checked again and again: announced once, placed once
    assert len(await lost_events(js)) == 1
    assert len(second.placements) == 1


async def test_agent_with_a_fresh_heartbeat_in_kv_is_not_lost(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler  # noqa: F811
) -> None:
    agent = await agents("a-1")
    s = await scheduler()
    await asyncio.sleep(0.3)
    # Our view says silent for ages (as a lagging watch would): KV itself says alive.
    hb = s.state.heartbeats["a-1"]
    s.state.apply_heartbeat("a-1", msgspec.structs.replace(hb, at=time.time() - 100))
    assert [r.agent_id for r in s.lost_agents.suspects(time.time())] == ["a-1"]
    assert await s.lost_agents.check_once() == []
    await asyncio.sleep(1.5)  # and the loop, too, leaves it alone
    assert (await agent.current()).lost_at == 0.0
    assert await lost_events(js) == []


async def test_containers_of_a_draining_agent_are_replaced_elsewhere(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler  # noqa: F811
) -> None:
    gpu = [(0, "H100")]
    spot = await agents("a-spot", gpus=gpu, on_place="busy")
    s = await scheduler(reconcile_interval=30.0)  # only the drain's wake-up can place
    await deploy(js, fn("f", resources=Resources(gpu_type="H100")))
    await until_known(s, key("f"))
    await bus.publish(js, names.input_subject(key("f")), b"input", msg_id="in-1")
    await signal(js, key("f"))
    await eventually(lambda: spot.placements)
    other = await agents("b-other", gpus=gpu, on_place="busy")
    await asyncio.sleep(0.5)
    assert other.placements == []

    # The reclaim notice: the agent marks itself draining (its containers still run).
    def drain(raw: bytes | None) -> bytes | None:
        rec = AgentRecordDecoder.decode(raw)
        return encode(msgspec.structs.replace(rec, draining=True, drain_reason="preempted"))

    await bus.kv_cas(spot.kv, "a-spot", drain)
    await eventually(lambda: other.placements, timeout=5.0)
    await asyncio.sleep(1.0)
    assert len(spot.placements) == 1 and len(other.placements) == 1
