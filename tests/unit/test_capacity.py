from __future__ import annotations

import random

import pytest

from burst_core.schemas import AgentRecord, Allocation, GpuInfo, Resources
from burst_scheduler import placement
from burst_scheduler.capacity import CapacityIndex

TYPES = ["H100", "A100-80GB", "L4"]


def random_agent(rng: random.Random, i: int) -> AgentRecord:
    gpus = [GpuInfo(index=g, type=rng.choice(TYPES)) for g in range(rng.choice([0, 0, 2, 4, 8]))]
    cpu = float(rng.choice([2, 8, 16]))
    memory = rng.choice([4096, 16384])
    allocations: dict[str, Allocation] = {}
    free = [g.index for g in gpus]
    rng.shuffle(free)
    for n in range(rng.randint(0, 4)):
        take = [free.pop() for _ in range(min(len(free), rng.randint(0, 2)))]
        allocations[f"ct-{i}-{n}"] = Allocation(
            fn_key="ws.app.f",
            resources=Resources(cpu=rng.choice([0.25, 0.5, 1.0]), memory_mb=rng.choice([128, 1024]),
                                gpu_count=len(take)),
            gpu_indices=take,
        )
    return AgentRecord(agent_id=f"a{i:03d}", cpu=cpu, memory_mb=memory, gpus=gpus,
                       allocations=allocations, spot=rng.random() < 0.3,
                       draining=rng.random() < 0.1)


REQUESTS = [
    Resources(cpu=0.5, memory_mb=256),
    Resources(cpu=4.0, memory_mb=8192),
    Resources(cpu=1.0, gpu_type="H100"),
    Resources(cpu=1.0, gpu_type="h100", gpu_count=2),
    Resources(cpu=1.0, gpu_type="A100-80GB", gpu_count=4),
    Resources(cpu=0.25, gpu_type="any", gpu_count=1),
    Resources(cpu=0.25, gpu_type="ANY", gpu_count=3),
    Resources(cpu=12.0, gpu_type="L4", gpu_count=1),
]


@pytest.mark.parametrize("seed", range(30))
def test_index_chooses_what_the_linear_scan_chooses(seed: int) -> None:
    rng = random.Random(seed)
    agents = [random_agent(rng, i) for i in range(rng.randint(1, 40))]
    dead = {a.agent_id for a in agents if rng.random() < 0.1}
    index = CapacityIndex()
    for a in agents:
        index.update(a.agent_id, a)
    live = [a for a in agents if a.agent_id not in dead]
    for request in REQUESTS:
        for allow_spot in (True, False):
            exclude = frozenset(a.agent_id for a in agents if rng.random() < 0.1)
            want = placement.choose(request, live, 1.5, allow_spot=allow_spot, exclude=exclude)
            got = index.choose(request, lambda a: a not in dead, 1.5, allow_spot=allow_spot,
                               exclude=exclude)
            assert got == want, (request, allow_spot)


def test_updates_move_an_agent_and_removal_forgets_it() -> None:
    index = CapacityIndex()
    rec = AgentRecord(agent_id="a", cpu=4, memory_mb=4096,
                      gpus=[GpuInfo(index=0, type="H100"), GpuInfo(index=1, type="H100")])
    index.update("a", rec)
    req = Resources(cpu=1, gpu_type="H100", gpu_count=1)
    assert index.choose(req, lambda _: True) == placement.Choice("a", req, (0,), False)
    rec = placement.with_allocation(rec, "ct-1", "ws.app.f", req, (0,), 1.0)
    index.update("a", rec)
    assert index.choose(req, lambda _: True) == placement.Choice("a", req, (1,), False)
    rec = placement.with_allocation(rec, "ct-2", "ws.app.f", req, (1,), 1.0)
    index.update("a", rec)
    assert index.choose(req, lambda _: True) is None
    assert index.choose(Resources(cpu=2), lambda _: True) is not None
    index.update("a", placement.without_allocation(rec, "ct-1"))
    assert index.choose(req, lambda _: True) == placement.Choice("a", req, (0,), False)
    index.update("a", None)
    assert len(index) == 0 and index.choose(Resources(cpu=0.1), lambda _: True) is None
