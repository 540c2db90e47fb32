"""Services' liveness records (KV ``burst_services``): a replica that is killed leaves the
live set once its record is older than the timeout, and its record is deleted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from burst_core import bus, names
from burst_core.schemas import ServiceHeartbeat, encode
from burst_core.service import heartbeat_loop, live_services

pytestmark = pytest.mark.integration


async def test_a_stale_record_leaves_and_is_deleted(js: Any) -> None:
    kv = await js.key_value(names.KV_SERVICES)
    now = time.time()
    for instance, age in (("killed", 30.0), ("slow", 2.0)):
        await kv.put(names.service_key("scheduler", instance), encode(ServiceHeartbeat(
            service="scheduler", instance=instance, at=now - age, started_at=now - 60)))
    beating = asyncio.create_task(heartbeat_loop(js, "billing", "alive", 0.1))
    try:
        async def live() -> set[str]:
            return {f"{hb.service}.{hb.instance}" for hb in await live_services(js, 5.0)}

        for _ in range(50):
            if "billing.alive" in await live():
                break
            await asyncio.sleep(0.1)
        # 30 s old: gone, from the answer and from KV; 2 s old: still within 5 s.
        assert await live() == {"billing.alive", "scheduler.slow"}
        assert (await bus.kv_get(kv, names.service_key("scheduler", "killed")))[0] is None
        # A shorter timeout leaves out the 2 s old one too; the beating one stays.
        assert {hb.instance for hb in await live_services(js, 1.0)} == {"alive"}
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
