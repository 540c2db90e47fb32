"""The scheduler under faults, against a real nats-server and redis-server (the
harness is test_scheduler.py's)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from burst_core import bus, names
from burst_core.schemas import AgentHeartbeat, ContainerView
from tests.integration.test_scheduler import (  # noqa: F401 - fixtures used by name
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


async def test_a_stale_view_never_deletes_a_live_functions_input_consumer(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler,  # noqa: F811
) -> None:
    """After a NATS restart the scheduler's heartbeat watch may lag: the agent looks
    silent while its claims stand and it beats into KV. Deleting the function's input
    consumer then would cut its live containers off (409 Consumer Deleted, a stall)."""
    agent = await agents("agent-1", heartbeat_interval=3600)  # one beat, fresh in KV
    s = await scheduler(heartbeat_timeout=60.0, reconcile_interval=3600)
    await deploy(js, fn("live"))
    await until_known(s, key("live"))
    await signal(js, key("live"))
    await eventually(lambda: agent.placements)
    consumer = names.function_consumer(key("live"))
    await bus.ensure_consumer(js, names.STREAM_INPUTS, ConsumerConfig(
        durable_name=consumer, ack_policy=AckPolicy.EXPLICIT,
        filter_subject=names.input_subject(key("live"))))
    # Our view of its heartbeat goes stale (a lagging watch), its record keeps the claim.
    s.state.apply_heartbeat(agent.agent_id, AgentHeartbeat(
        agent_id=agent.agent_id, at=time.time() - 600, containers=[]))
    assert not s.state.containers_of(key("live"), time.time())
    assert not await s.lost_agents.check_once()  # KV says it beats: not lost
    assert not await s.autoscaler.reap_consumer(key("live"))
    assert await s.reconciler.sweep_consumers() == []
    await js.consumer_info(names.STREAM_INPUTS, consumer)  # still there
    # Once it is marked lost, its claims are released and the consumer goes.
    await agent.stop()
    await agent.beat(at=time.time() - 600)
    await eventually(lambda: s.lost_agents.check_once(), timeout=5)

    async def deleted() -> bool:
        try:
            await js.consumer_info(names.STREAM_INPUTS, consumer)
        except nats.js.errors.NotFoundError:
            return True
        return False

    await eventually(deleted, timeout=5)


async def test_a_lost_agents_inputs_run_again_at_once_at_their_parallelism(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler,  # noqa: F811
) -> None:
    """An agent dies with 4 inputs running in 4 containers: marked lost after its
    heartbeat timeout, the scheduler naks them (their ack subjects ride on its heartbeats)
    and places 4 containers elsewhere. AckWait is a minute: only the hand-back can make
    them come back in time."""
    fn_key = key("work")
    consumer = names.function_consumer(fn_key)
    victim = await agents("victim", on_place="busy")
    s = await scheduler(heartbeat_timeout=1.0, lost_check_interval=0.1,
                        reconcile_interval=3600)
    await deploy(js, fn("work"))
    await until_known(s, fn_key)
    for i in range(4):
        await signal(js, fn_key)  # each busy container saturates: one more each time
        await eventually(lambda n=i + 1: len(victim.placements) == n)
        await eventually(lambda n=i + 1: len([  # the scheduler saw them all busy
            c for c in s.state.containers_of(fn_key, time.time())
            if c.view is not None and c.view.state == "busy"]) == n)
        await bus.publish(js, names.input_subject(fn_key), b"in-%d" % i, msg_id=f"in-{i}")
    # Made by the agent once it has a container (the scheduler reaps one without).
    await bus.ensure_consumer(js, names.STREAM_INPUTS, ConsumerConfig(
        durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
        filter_subject=names.input_subject(fn_key)))
    pull = await js.pull_subscribe_bind(consumer, names.STREAM_INPUTS)
    running = await pull.fetch(4, timeout=5)
    assert len(running) == 4
    for p, msg in zip(victim.placements, running, strict=True):  # one input per container
        victim.views[p.container_id] = ContainerView(
            container_id=p.container_id, fn_key=fn_key, state="busy", in_flight=1,
            acks=[msg.reply])
    await victim.beat()
    survivor = await agents("survivor", on_place=None)  # its containers are starting
    await victim.stop()  # killed: no more heartbeats
    killed = time.monotonic()
    again = []
    while len(again) < 4:
        assert time.monotonic() - killed < 1.0 + 4.0, f"handed back: {again}"
        with contextlib.suppress(TimeoutError):
            again += await pull.fetch(4 - len(again), timeout=0.5)
    assert sorted(m.data for m in again) == [b"in-%d" % i for i in range(4)]
    assert all(m.metadata.num_delivered == 2 for m in again)
    # As many containers as ran them, at once, not one and then one per saturation.
    await eventually(lambda: len(survivor.placements) == 4, timeout=3)
    assert s.lost_agents.handed_back == 4
    for m in again:
        await m.ack()
