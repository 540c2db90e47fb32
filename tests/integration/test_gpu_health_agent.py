"""The agent's GPU health loop over a stand-in NVML (tests/fake_nvml.py injected as
``pynvml``): its GPUs are discovered through it; an Xid on one GPU marks that GPU unhealthy
in the agent's record (the scheduler's view: no free GPU there), and memory a finished
container left on the other GPU is reported on that GPU's record."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from burst_agent.agent import Agent
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.settings import AgentSettings
from burst_core import bus, names
from burst_core.schemas import AgentRecordDecoder
from burst_scheduler.placement import free_capacity
from tests import fake_nvml

pytestmark = pytest.mark.integration


async def test_xid_and_leftover_memory_reach_the_agents_record(
        js: Any, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cards = [fake_nvml.Gpu(), fake_nvml.Gpu()]
    nv = fake_nvml.make(cards)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    agent = Agent(AgentSettings(nats_url=nats_url, home=str(tmp_path), agent_id="gpu-a",
                                gpu_health_interval=0.2, metrics=False),
                  runtime=ProcessRuntime())
    await agent.start()
    try:
        kv = await js.key_value(names.KV_AGENTS)

        async def record() -> Any:
            raw, _ = await bus.kv_get(kv, "gpu-a")
            return AgentRecordDecoder.decode(raw)

        rec = await record()
        assert [g.type for g in rec.gpus] == ["H200", "H200"]
        assert free_capacity(rec).gpus == {0: "H200", 1: "H200"}
        nv.xid(0, 79)  # fallen off the bus
        cards[1].procs = [fake_nvml.Proc(999_999_0, 2 << 30)]  # a pid of no container
        async with asyncio.timeout(30):
            while not ((rec := await record()).gpus[0].unhealthy and rec.gpus[1].left):
                await asyncio.sleep(0.1)
        assert rec.gpus[0].unhealthy == "Xid 79 (NVML)"
        assert rec.gpus[1].unhealthy == ""
        assert rec.gpus[1].left == "2048 MiB held by a process of no container (pid 9999990)"
        assert free_capacity(rec).gpus == {1: "H200"}  # nothing placed on GPU 0
    finally:
        await agent.stop()
