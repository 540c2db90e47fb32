"""Agent service entry: run an :class:`Agent` until told to stop."""

from __future__ import annotations

import asyncio

from burst_agent.agent import Agent
from burst_agent.settings import AgentSettings


async def run(settings: AgentSettings, stop: asyncio.Event) -> None:
    agent = Agent(settings)
    agent.leave = stop.set
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
