"""Agent service entry: run an :class:`Agent` until told to stop."""

from __future__ import annotations

import asyncio
import os
import sys

from burst_agent.agent import Agent
from burst_agent.settings import AgentSettings

#: The agent's exit status when NATS cut it off (its user revoked or expired).
REVOKED_EXIT = 3


async def run(settings: AgentSettings, stop: asyncio.Event) -> None:
    agent = Agent(settings)
    agent.leave = stop.set
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
    if agent.revoked:
        # Nothing is left to tell anyone (NATS refuses us), and a task stuck on the
        # closed connection must not keep a cut-off agent alive: leave now.
        print("burst agent: this agent's NATS credentials were revoked (burst agent revoke) "
              "or expired: it left the cluster; join again with a new bundle",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(REVOKED_EXIT)
