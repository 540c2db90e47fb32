"""Which idle containers to stop so that waiting work fits (``make_room.plan_idle``)."""

from __future__ import annotations

from burst_core.schemas import AgentRecord, Allocation, GpuInfo, Resources
from burst_scheduler.make_room import Candidate, plan_idle


def agent(agent_id: str, cpu: float = 2.0, gpus: list[str] | None = None,
          allocs: dict[str, Allocation] | None = None) -> AgentRecord:
    return AgentRecord(agent_id=agent_id, cpu=cpu, memory_mb=8192,
                       gpus=[GpuInfo(index=i, type=t) for i, t in enumerate(gpus or [])],
                       allocations=allocs or {})


def alloc(fn_key: str, cpu: float = 1.0, gpus: list[int] | None = None,
          gpu_type: str | None = None) -> Allocation:
    return Allocation(fn_key=fn_key, resources=Resources(cpu=cpu, memory_mb=128,
                                                         gpu_type=gpu_type,
                                                         gpu_count=len(gpus or [])),
                      gpu_indices=gpus or [])


def cand(cid: str, agent_id: str, fn_key: str, idle_since: float) -> Candidate:
    return Candidate(cid, agent_id, fn_key, idle_since)


ONE_CPU = Resources(cpu=1.0, memory_mb=128)


def test_the_least_recently_used_idle_container_goes_first() -> None:
    a = agent("a", allocs={"c1": alloc("w.x.f"), "c2": alloc("w.x.g")})
    cands = [cand("c1", "a", "w.x.f", 20.0), cand("c2", "a", "w.x.g", 10.0)]
    plan = plan_idle([a], [ONE_CPU], cands, {"w.x.f": 1, "w.x.g": 1})
    assert plan is not None and plan.agent_id == "a"
    assert [c.container_id for c in plan.containers] == ["c2"]


def test_never_below_min_containers() -> None:
    a = agent("a", allocs={"c1": alloc("w.x.f"), "c2": alloc("w.x.g")})
    cands = [cand("c1", "a", "w.x.f", 20.0), cand("c2", "a", "w.x.g", 10.0)]
    # g has no spare container (its minimum): f's goes although used more recently.
    plan = plan_idle([a], [ONE_CPU], cands, {"w.x.f": 1, "w.x.g": 0})
    assert plan is not None and [c.container_id for c in plan.containers] == ["c1"]
    assert plan_idle([a], [ONE_CPU], cands, {"w.x.f": 0, "w.x.g": 0}) is None


def test_only_containers_that_free_what_is_missing_are_stopped() -> None:
    # The GPU is what is missing: the older CPU-only idle container is left alone.
    a = agent("a", cpu=8.0, gpus=["H100"], allocs={
        "cpu": alloc("w.x.c", cpu=1.0), "gpu": alloc("w.x.g", cpu=1.0, gpus=[0],
                                                     gpu_type="H100")})
    cands = [cand("cpu", "a", "w.x.c", 1.0), cand("gpu", "a", "w.x.g", 5.0)]
    want = Resources(cpu=1.0, memory_mb=128, gpu_type="h100", gpu_count=1)
    plan = plan_idle([a], [want], cands, {"w.x.c": 1, "w.x.g": 1})
    assert plan is not None and [c.container_id for c in plan.containers] == ["gpu"]
    # Another GPU type cannot be freed into an H100.
    other = agent("b", cpu=8.0, gpus=["A100"], allocs={
        "a100": alloc("w.x.g", cpu=1.0, gpus=[0], gpu_type="A100")})
    assert plan_idle([other], [want], [cand("a100", "b", "w.x.g", 1.0)], {"w.x.g": 1}) is None


def test_the_agent_needing_fewest_stops_wins_and_fallbacks_come_after() -> None:
    many = agent("a", cpu=2.0, allocs={"s1": alloc("w.x.f", cpu=0.5),
                                       "s2": alloc("w.x.f", cpu=0.5),
                                       "s3": alloc("w.x.f", cpu=1.0)})
    few = agent("b", cpu=1.0, allocs={"big": alloc("w.x.f", cpu=1.0)})
    cands = [cand("s1", "a", "w.x.f", 1.0), cand("s2", "a", "w.x.f", 2.0),
             cand("big", "b", "w.x.f", 3.0)]
    plan = plan_idle([many, few], [ONE_CPU], cands, {"w.x.f": 4})
    assert plan is not None and plan.agent_id == "b"
    assert [c.container_id for c in plan.containers] == ["big"]

    gpu = agent("g", cpu=8.0, gpus=["L4"], allocs={"l4": alloc("w.x.f", gpus=[0],
                                                                gpu_type="L4")})
    wants = [Resources(gpu_type="H100", gpu_count=1), Resources(gpu_type="L4", gpu_count=1)]
    plan = plan_idle([gpu], wants, [cand("l4", "g", "w.x.f", 1.0)], {"w.x.f": 1})
    assert plan is not None and plan.request.gpu_type == "L4"


def test_room_already_being_made_needs_no_more_stops() -> None:
    a = agent("a", cpu=2.0, allocs={"c1": alloc("w.x.f"), "c2": alloc("w.x.f")})
    plan = plan_idle([a], [ONE_CPU], [cand("c2", "a", "w.x.f", 1.0)], {"w.x.f": 2},
                     freed={"a": {"c1"}})
    assert plan is not None and plan.containers == []


def test_the_waiting_reason_names_what_is_evicted_but_not_other_workspaces() -> None:
    from burst_scheduler.autoscale import Autoscaler

    own = "w.app.b"
    assert Autoscaler._count_names(["w.app.a"], own) == "1 idle container of app/a"
    assert (Autoscaler._count_names(["w.app.a", "w.app.a", "w.x.c"], own)
            == "2 idle containers of app/a and 1 of x/c")
    assert Autoscaler._count_names(["other.secret.f"], own) == (
        "1 idle container of another workspace")
    assert Autoscaler._names(["w.app.a", "other.s.f", "other.t.g"], own) == (
        "app/a and another workspace")
