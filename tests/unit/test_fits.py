"""burst_core.fits: whether any agent could ever hold a request, else why (the largest)."""

from __future__ import annotations

from burst_core.fits import shortfall
from burst_core.schemas import AgentRecord, GpuInfo, Resources


def agent(agent_id: str, gpus: str = "", cpu: float = 8, mem: int = 32768,
          lost: bool = False) -> AgentRecord:
    cards = [GpuInfo(index=i, type=t) for i, t in enumerate(gpus.split(",") if gpus else [])]
    return AgentRecord(agent_id=agent_id, cpu=cpu, memory_mb=mem, gpus=cards,
                       lost_at=1.0 if lost else 0.0)


def h200(n: int) -> Resources:
    return Resources(gpu_type="H200", gpu_count=n)


def test_two_gpus_where_the_largest_agent_has_one() -> None:
    agents = [agent("small", "H200", cpu=4), agent("big", "H200", cpu=16), agent("cpu")]
    assert shortfall([h200(2)], agents) == (
        'no agent can hold gpu="H200:2", cpu=0.125, memory=128 MiB: the largest agent, big, '
        "has 1×H200, 16 CPU, 32768 MiB")
    assert shortfall([h200(1)], agents) == ""
    assert shortfall([h200(2), h200(1)], agents) == ""  # a fallback fits


def test_unhealthy_and_lost_do_not_count_and_no_agent_at_all_waits() -> None:
    a = agent("a", "H200,H200")
    a.gpus[1].unhealthy = "Xid 79 (NVML)"
    assert shortfall([h200(2)], [a, agent("gone", "H200,H200", lost=True)]) == (
        'no agent can hold gpu="H200:2", cpu=0.125, memory=128 MiB: the largest agent, a, '
        "has 1×H200 (and 1 unhealthy), 8 CPU, 32768 MiB")
    assert shortfall([h200(2)], []) == ""  # agents may still join


def test_cpu_memory_and_any_gpu() -> None:
    agents = [agent("a", "A100,T4", cpu=4, mem=8192)]
    assert "cpu=16" in shortfall([Resources(cpu=16)], agents)
    assert shortfall([Resources(cpu=16)], agents, overcommit=4) == ""
    assert "memory=9000 MiB" in shortfall([Resources(memory_mb=9000)], agents)
    assert shortfall([Resources(gpu_type="any", gpu_count=1)], agents) == ""
    assert shortfall([Resources(gpu_type="any", gpu_count=2)], agents).endswith(
        "the largest agent, a, has 1×A100, 1×T4, 4 CPU, 8192 MiB")
