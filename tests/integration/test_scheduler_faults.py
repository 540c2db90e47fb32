"""The scheduler under faults, against a real nats-server and redis-server (the
harness is test_scheduler.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from burst_core import bus, names
from burst_core.schemas import AgentHeartbeat, ContainerStopped, ContainerView, encode
from tests.integration.test_scheduler import (  # noqa: F401 - fixtures used by name
    APP,
    WS,
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


async def test_inputs_whose_containers_all_crashed_get_containers_at_once(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler,  # noqa: F811
) -> None:
    """Poison inputs: each killed its container, and each waits out its retry's backoff
    (delivered before, so not in the consumer's pending count). The crash wakes the
    reconcile pass (its interval is an hour here), which places a container for each,
    not one per pass."""
    agent = await agents("agent-1", cpu=64, memory_mb=1 << 20)
    s = await scheduler(reconcile_interval=3600)
    await deploy(js, fn("poison"))
    fn_key = key("poison")
    await until_known(s, fn_key)
    await asyncio.sleep(0.3)  # the passes the start and the deployment woke are done
    consumer = names.function_consumer(fn_key)
    await bus.ensure_consumer(js, names.STREAM_INPUTS, ConsumerConfig(
        durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=60,
        filter_subject=names.input_subject(fn_key)))
    for i in range(6):
        await bus.publish(js, names.input_subject(fn_key), b"in-%d" % i, msg_id=f"p-{i}")
    pull = await js.pull_subscribe_bind(consumer, names.STREAM_INPUTS)
    for msg in await pull.fetch(6, timeout=5):
        await msg.nak(delay=30)  # a user retry's backoff
    info = await js.consumer_info(names.STREAM_INPUTS, consumer)
    assert info.num_pending == 0 and info.num_ack_pending == 6
    assert not agent.placements
    await bus.publish(js, names.container_event_subject("stopped", "agent-1"), encode(
        ContainerStopped(container_id="ct-gone", agent_id="agent-1", workspace=WS, app=APP,
                         function="poison", reason="crashed", exit_code=1, inputs_running=1,
                         at=time.time())))
    await eventually(lambda: len(agent.placements) == 6, timeout=5)
    await asyncio.sleep(0.5)
    assert len(agent.placements) == 6  # and no more: the 6 have room for them
    await s.reconciler.run_once()
    assert len(agent.placements) == 6


async def test_after_its_own_reconnect_the_scheduler_waits_a_heartbeat_timeout(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler,  # noqa: F811
) -> None:
    """While nats-server was down no agent could beat: right after the scheduler's
    reconnect every agent's last heartbeat is old. It is lost only if it stays silent a
    heartbeat timeout from then (else a NATS restart longer than the timeout would mark
    every agent lost, and each would stop all its containers)."""
    s = await scheduler(heartbeat_timeout=1.5, lost_check_interval=0.1)
    s.lost_agents.reconnected()
    agent = await agents("quiet", stale=True)  # its last beat long ago

    async def lost() -> bool:
        return bool((await agent.current()).lost_at)

    await asyncio.sleep(1.0)
    assert not await lost()
    await eventually(lost, timeout=5)  # still silent: lost after all
