from __future__ import annotations

import pytest

from burst_core.schemas import AgentHeartbeat, AgentRecord, Allocation, GpuInfo, Resources
from burst_scheduler import placement


def agent(
    agent_id: str,
    cpu: float = 4.0,
    memory_mb: int = 8192,
    gpus: list[tuple[int, str]] | None = None,
    used: list[Allocation] | None = None,
    spot: bool = False,
    draining: bool = False,
) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id, cpu=cpu, memory_mb=memory_mb,
        gpus=[GpuInfo(index=i, type=t) for i, t in (gpus or [])],
        allocations={f"ct-{agent_id}-{n}": a for n, a in enumerate(used or [])},
        spot=spot, draining=draining,
    )


def alloc(cpu: float = 1.0, memory_mb: int = 1024, gpu_indices: list[int] | None = None,
          gpu_type: str | None = None) -> Allocation:
    idx = gpu_indices or []
    return Allocation(
        fn_key="ws.app.f",
        resources=Resources(cpu=cpu, memory_mb=memory_mb, gpu_type=gpu_type,
                            gpu_count=len(idx)),
        gpu_indices=idx,
    )


# ---- fit -----------------------------------------------------------------------------
def test_free_capacity_subtracts_every_allocation() -> None:
    a = agent("a", cpu=4, memory_mb=4096, gpus=[(0, "A100"), (1, "A100")],
              used=[alloc(1.5, 1000, [1], "A100"), alloc(0.5, 24)])
    free = placement.free_capacity(a)
    assert free.cpu == pytest.approx(2.0)
    assert free.memory_mb == 3072
    assert dict(free.gpus) == {0: "A100"}


@pytest.mark.parametrize(
    ("request_", "fits"),
    [
        (Resources(cpu=3.0, memory_mb=1024), True),
        (Resources(cpu=3.01, memory_mb=1024), False),  # CPU short
        (Resources(cpu=1.0, memory_mb=7168), True),
        (Resources(cpu=1.0, memory_mb=7169), False),  # memory short
    ],
)
def test_cpu_and_memory_must_both_fit(request_: Resources, fits: bool) -> None:
    a = agent("a", cpu=4, memory_mb=8192, used=[alloc(1.0, 1024)])
    assert (placement.fit(a, request_) is not None) is fits


def test_overcommit_scales_cpu_and_memory_but_not_gpus() -> None:
    a = agent("a", cpu=2, memory_mb=2048, gpus=[(0, "T4")], used=[alloc(2.0, 2048, [0], "T4")])
    assert placement.fit(a, Resources(cpu=1, memory_mb=512)) is None
    assert placement.fit(a, Resources(cpu=1, memory_mb=512), overcommit=2.0) == ()
    assert placement.fit(a, Resources(cpu=0.1, gpu_type="T4", gpu_count=1), overcommit=4.0) is None


def test_many_small_allocations_do_not_lose_an_exact_fit_to_rounding() -> None:
    a = agent("a", cpu=1.0, used=[alloc(0.1, 1) for _ in range(9)])
    assert placement.fit(a, Resources(cpu=0.1, memory_mb=1)) == ()


def test_gpu_fit_takes_free_indices_of_the_requested_type() -> None:
    a = agent("a", gpus=[(0, "A100"), (1, "A100"), (2, "H100"), (3, "A100")],
              used=[alloc(0.5, 128, [0], "A100")])
    assert placement.fit(a, Resources(gpu_type="A100", gpu_count=2)) == (1, 3)
    assert placement.fit(a, Resources(gpu_type="a100 ", gpu_count=1)) == (1,)
    assert placement.fit(a, Resources(gpu_type="H100", gpu_count=1)) == (2,)
    assert placement.fit(a, Resources(gpu_type="H100", gpu_count=2)) is None
    assert placement.fit(a, Resources(gpu_type="A10G", gpu_count=1)) is None
    assert placement.fit(a, Resources(gpu_type="A100", gpu_count=3)) is None


def test_gpu_type_without_count_means_one_gpu() -> None:
    a = agent("a", gpus=[(0, "L4")])
    assert placement.gpu_count(Resources(gpu_type="L4")) == 1
    assert placement.fit(a, Resources(gpu_type="L4")) == (0,)


def test_any_gpu_uses_one_type_preferring_the_scarcer() -> None:
    a = agent("a", gpus=[(0, "A100"), (1, "A100"), (2, "T4")])
    assert placement.fit(a, Resources(gpu_type="any", gpu_count=1)) == (2,)
    assert placement.fit(a, Resources(gpu_type="any", gpu_count=2)) == (0, 1)


def test_cpu_request_never_touches_gpus() -> None:
    a = agent("a", gpus=[(0, "A100")])
    assert placement.fit(a, Resources(cpu=1)) == ()


# ---- choose --------------------------------------------------------------------------
def test_choose_skips_agents_that_do_not_fit() -> None:
    small = agent("small", cpu=1, memory_mb=512)
    no_gpu = agent("no-gpu", cpu=64, memory_mb=65536)
    wrong_gpu = agent("wrong-gpu", gpus=[(0, "T4")])
    right = agent("right", cpu=8, memory_mb=16384, gpus=[(0, "A100")])
    req = Resources(cpu=2, memory_mb=2048, gpu_type="A100", gpu_count=1)
    choice = placement.choose(req, [small, no_gpu, wrong_gpu, right])
    assert choice is not None
    assert (choice.agent_id, choice.gpu_indices) == ("right", (0,))
    assert placement.choose(req, [small, no_gpu, wrong_gpu]) is None


def test_choose_prefers_the_fullest_agent() -> None:
    empty = agent("a-empty", cpu=4, memory_mb=4096)
    half = agent("b-half", cpu=4, memory_mb=4096, used=[alloc(2.0, 512)])
    memory_heavy = agent("c-mem", cpu=4, memory_mb=4096, used=[alloc(0.5, 3000)])
    req = Resources(cpu=0.5, memory_mb=512)
    choice = placement.choose(req, [empty, half, memory_heavy])
    assert choice is not None and choice.agent_id == "c-mem"
    # Once the fullest cannot take it, the next fullest does.
    big = Resources(cpu=0.5, memory_mb=2048)
    choice = placement.choose(big, [empty, half, memory_heavy])
    assert choice is not None and choice.agent_id == "b-half"


def test_cpu_work_goes_to_machines_without_gpus_first() -> None:
    gpu_box = agent("gpu", cpu=8, gpus=[(0, "A100")], used=[alloc(6.0, 512)])
    cpu_box = agent("cpu", cpu=8)
    choice = placement.choose(Resources(cpu=1), [gpu_box, cpu_box])
    assert choice is not None and choice.agent_id == "cpu"
    choice = placement.choose(Resources(cpu=1), [gpu_box])
    assert choice is not None and choice.agent_id == "gpu"


def test_gpu_work_goes_where_it_leaves_fewest_gpus_free() -> None:
    eight = agent("a-eight", gpus=[(i, "H100") for i in range(8)])
    two = agent("b-two", gpus=[(0, "H100"), (1, "H100")])
    choice = placement.choose(Resources(gpu_type="H100", gpu_count=1), [eight, two])
    assert choice is not None and choice.agent_id == "b-two"
    choice = placement.choose(Resources(gpu_type="H100", gpu_count=4), [eight, two])
    assert choice is not None and (choice.agent_id, choice.gpu_indices) == ("a-eight", (0, 1, 2, 3))


def test_draining_excluded_and_spot_agents_follow_allow_spot() -> None:
    draining = agent("a", draining=True)
    spot = agent("b", spot=True)
    req = Resources(cpu=1)
    assert placement.choose(req, [draining]) is None
    choice = placement.choose(req, [draining, spot])
    assert choice is not None and choice.agent_id == "b" and choice.spot
    assert placement.choose(req, [draining, spot], allow_spot=False) is None
    assert placement.choose(req, [spot], exclude=frozenset({"b"})) is None


def test_choose_first_tries_fallbacks_in_order() -> None:
    a = agent("a", gpus=[(0, "L4"), (1, "A10G")])
    requests = [Resources(gpu_type="H100"), Resources(gpu_type="A10G"), Resources(gpu_type="L4")]
    choice = placement.choose_first(requests, [a])
    assert choice is not None
    assert choice.resources.gpu_type == "A10G" and choice.gpu_indices == (1,)
    assert placement.choose_first(requests[:1], [a]) is None


# ---- records and liveness ------------------------------------------------------------
def test_with_and_without_allocation_leave_the_original_untouched() -> None:
    a = agent("a", gpus=[(0, "A100")])
    req = Resources(cpu=1, gpu_type="A100", gpu_count=1)
    b = placement.with_allocation(a, "ct-1", "ws.app.f", req, (0,), 12.5)
    assert a.allocations == {}
    assert b.allocations["ct-1"].gpu_indices == [0]
    assert b.allocations["ct-1"].placed_at == 12.5
    assert placement.fit(b, req) is None
    c = placement.without_allocation(b, "ct-1")
    assert c.allocations == {} and placement.fit(c, req) == (0,)


def test_live_agents_need_a_record_and_a_fresh_heartbeat() -> None:
    records = {"a": agent("a"), "b": agent("b"), "c": agent("c")}
    beats = {
        "a": AgentHeartbeat(agent_id="a", at=100.0),
        "b": AgentHeartbeat(agent_id="b", at=89.0),
        "d": AgentHeartbeat(agent_id="d", at=100.0),  # heartbeat but no record
    }
    live = placement.live_agents(records, beats, now=100.5, timeout=10.0)
    assert [r.agent_id for r in live] == ["a"]
    assert placement.is_fresh(beats["b"], now=99.0, timeout=10.0)
    assert not placement.is_fresh(None, now=0.0, timeout=10.0)
