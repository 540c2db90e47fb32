"""Answered inputs are acked together, ``ack_delay`` after the first (the agent's
``ack_later``), and at once when the agent flushes (stopping)."""

from __future__ import annotations

import asyncio

import pytest

from burst_agent.agent import Agent
from burst_agent.settings import AgentSettings
from burst_core import names

pytestmark = pytest.mark.integration


async def test_acks_wait_ack_delay_then_go_together_and_flush_sends_them_at_once(  # type: ignore[no-untyped-def]
        js, nats_url: str, tmp_path) -> None:
    subject = names.input_subject("default.acks.f")
    psub = await js.pull_subscribe(subject, durable="acks_test", stream=names.STREAM_INPUTS)

    async def delivered(n: int) -> list:  # type: ignore[type-arg]
        for i in range(n):
            await js.publish(subject, f"input {i}".encode())
        return await psub.fetch(n, timeout=5)

    async def ack_pending() -> int:
        info = await js.consumer_info(names.STREAM_INPUTS, "acks_test")
        return int(info.num_ack_pending)

    agent = Agent(AgentSettings(nats_url=nats_url, home=str(tmp_path), ack_delay=0.5),
                  runtime=object())  # type: ignore[arg-type]
    for msg in await delivered(5):
        agent.ack_later(msg)
    await asyncio.sleep(0.2)
    assert await ack_pending() == 5  # held back for ack_delay
    await asyncio.sleep(0.6)
    assert await ack_pending() == 0  # then all went
    for msg in await delivered(3):
        agent.ack_later(msg)
    await agent.flush_acks()  # stopping: what is held goes at once
    await js._nc.flush()
    assert await ack_pending() == 0
    info = await js.consumer_info(names.STREAM_INPUTS, "acks_test")
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 8


async def test_a_confirmed_flush_returns_once_the_inputs_left_the_stream(  # type: ignore[no-untyped-def]
        js, nats_url: str, tmp_path) -> None:
    """A stopping container flushes with ``confirm``: when it returns, the answered inputs
    are gone from the (work-queue) inputs stream, as the scheduler's backlog check, woken
    by the stop, reads it. A held ack (ack_delay 10 s here) would still count there."""
    subject = names.input_subject("default.acks.g")
    psub = await js.pull_subscribe(subject, durable="acks_confirm", stream=names.STREAM_INPUTS)
    agent = Agent(AgentSettings(nats_url=nats_url, home=str(tmp_path), ack_delay=10.0,
                                stop_ack_timeout=5.0),
                  runtime=object())  # type: ignore[arg-type]

    async def in_stream() -> int:
        info = await js.stream_info(names.STREAM_INPUTS, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())

    for round_ in range(20):
        for i in range(3):
            await js.publish(subject, f"input {round_}.{i}".encode())
        for msg in await psub.fetch(3, timeout=5):
            agent.ack_later(msg)
        assert await in_stream() == 3  # held back
        await agent.flush_acks(confirm=True)
        assert await in_stream() == 0, round_
