"""Scheduler service (placeholder until placement and scaledown land)."""

from __future__ import annotations

import asyncio

from burst_core import bus
from burst_core.service import heartbeat_loop

from burst_scheduler.settings import SchedulerSettings


async def run(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    nc = await bus.connect(settings.nats_url, f"scheduler-{settings.instance}")
    js = nc.jetstream()
    await bus.ensure_topology(js, bus.Topology(result_retention=settings.result_retention))
    hb = asyncio.create_task(
        heartbeat_loop(js, "scheduler", settings.instance, settings.service_heartbeat_interval)
    )
    await stop.wait()
    hb.cancel()
    await nc.drain()
