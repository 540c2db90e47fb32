"""The scheduler under faults, against a real nats-server and redis-server (the
harness is test_scheduler.py's)."""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from burst_core import bus, names
from burst_core.schemas import AgentHeartbeat
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
