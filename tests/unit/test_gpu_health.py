"""GPU health from NVML, through a stand-in for it (tests/fake_nvml.py): Xid errors that
are not the program's own and uncorrectable ECC errors make a GPU unhealthy; memory held by
a finished container's process, or by no container's, is reported once; the scheduler
places nothing on an unhealthy GPU."""

from __future__ import annotations

from burst_agent.gpu_health import Health
from burst_core.schemas import AgentRecord, GpuInfo, Resources
from burst_scheduler import capacity
from burst_scheduler.placement import free_capacity
from tests import fake_nvml


def gpus(n: int) -> list[GpuInfo]:
    return [GpuInfo(index=i, type="H200", memory_mb=143771) for i in range(n)]


def test_xid_marks_a_gpu_unhealthy_unless_the_program_caused_it() -> None:
    nv = fake_nvml.make([fake_nvml.Gpu(), fake_nvml.Gpu()])
    h = Health(nv, gpus(2), owner=lambda pid: "")
    assert h.check({}) == ({}, [])
    nv.xid(0, 13)  # a program's own fault (graphics engine exception): not the GPU
    nv.xid(1, 79)  # fallen off the bus
    bad, left = h.check({})
    assert bad == {1: "Xid 79 (NVML)"} and left == []
    assert h.check({}) == ({}, [])  # read once


def test_uncorrectable_ecc_marks_a_gpu_unhealthy() -> None:
    cards = [fake_nvml.Gpu(), fake_nvml.Gpu()]
    nv = fake_nvml.make(cards)
    h = Health(nv, gpus(2), owner=lambda pid: "")
    assert h.check({}) == ({}, [])
    cards[0].ecc_uncorrected = 2
    bad, _ = h.check({})
    assert bad == {0: "2 uncorrectable ECC error(s) (NVML)"}


def test_memory_left_by_a_finished_container_is_reported_once() -> None:
    cards = [fake_nvml.Gpu()]
    nv = fake_nvml.make(cards)
    owners = {101: "ct-running", 202: "ct-finished", 303: ""}
    h = Health(nv, gpus(1), owner=lambda pid: owners.get(pid, ""))
    cards[0].procs = [fake_nvml.Proc(100, 1 << 30),  # a running container's (listed)
                      fake_nvml.Proc(101, 1 << 30),  # a child of a running container
                      fake_nvml.Proc(202, 3 << 30),  # left by a finished container
                      fake_nvml.Proc(303, 512 << 20)]  # nobody's
    bad, left = h.check({100: "ct-running"})
    assert bad == {}
    assert [(lo.gpu, lo.pid, lo.used_mib, lo.container_id) for lo in left] == [
        (0, 202, 3072, "ct-finished"), (0, 303, 512, "")]
    assert left[0].describe() == "3072 MiB held by finished container ct-finished (pid 202)"
    assert left[1].describe() == "512 MiB held by a process of no container (pid 303)"
    assert h.check({100: "ct-running"}) == ({}, [])  # reported once


def test_no_placement_on_an_unhealthy_gpu() -> None:
    cards = gpus(2)
    cards[0].unhealthy = "Xid 79 (NVML)"
    rec = AgentRecord(agent_id="a", hostname="h", cpu=8, memory_mb=32768, gpus=cards,
                      runtime="process", allocations={}, started_at=0.0)
    assert free_capacity(rec).gpus == {1: "H200"}
    index = capacity.CapacityIndex()
    index.update("a", rec)
    one = Resources(cpu=1, memory_mb=1024, gpu_type="H200", gpu_count=1)
    two = Resources(cpu=1, memory_mb=1024, gpu_type="H200", gpu_count=2)
    choice = index.choose(one, lambda _: True)
    assert choice is not None and choice.gpu_indices == (1,), choice
    assert index.choose(two, lambda _: True) is None
