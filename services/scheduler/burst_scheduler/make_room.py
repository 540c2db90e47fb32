"""Making room for waiting work: evicting idle containers, preempting preemptible ones.

Idle containers yield (:func:`plan_idle`). When a function's input waits for CPU, memory or
GPUs that idle containers of other functions hold, the scheduler stops the least recently
used of them on one agent, just enough for one container of the waiting function to fit
there. Only containers the agents report idle with no input in flight are candidates, and
never so many of one function that it drops below its ``min_containers``. The stop order
carries the idle time it was decided on (``if_idle_since``): a container that took an
input meanwhile is not stopped (the agent refuses the order), and an input that reaches a
container already stopping is handed back, so no input is lost to an eviction. Among
agents, the one needing the fewest stops wins (then the one whose chosen containers have
been idle longest); the function's resources are tried before its GPU fallbacks, in
order, as a placement does. The fit is :func:`placement.fit` on the agent's record less
the chosen allocations: a declared GPU inventory and one found by NVML are the same list
of GPUs on the record, so both take the same path.

Preemption (:func:`plan`). A ``nonpreemptible`` function runs on on-demand agents only.
When none has room (and idle containers cannot make it), the scheduler may stop
preemptible containers (every function is preemptible unless marked otherwise, as in
Modal), busy ones included, on one on-demand agent so the function fits there: the agent
hands their in-flight inputs back at once, their claims are released, and the waiting
function is placed on the next pass. Among agents where that works, the one needing the
fewest stops wins.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from burst_core.schemas import AgentRecord, Allocation, FunctionSpec, Resources
from burst_scheduler import placement
from burst_scheduler.placement import _EPS, ANY_GPU, gpu_count, gpu_type_key
from burst_scheduler.state import ClusterState


@dataclass(frozen=True)
class Eviction:
    agent_id: str
    container_ids: list[str]


def without(agent: AgentRecord, container_ids: Collection[str]) -> AgentRecord:
    """``agent``'s record as it will be once ``container_ids`` are stopped."""
    if not container_ids:
        return agent
    return placement.replace_allocations(
        agent, {cid: a for cid, a in agent.allocations.items() if cid not in container_ids})


def _fits(agent: AgentRecord, request: Resources, freed: set[str], overcommit: float) -> bool:
    return placement.fit(without(agent, freed), request, overcommit) is not None


# ---- idle containers yield -----------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """An idle container that may be stopped to make room."""

    container_id: str
    agent_id: str
    fn_key: str
    idle_since: float


@dataclass(frozen=True)
class IdleEviction:
    """Where the waiting work will fit and what to stop there first (least recently used
    first; empty when the room is already being made)."""

    agent_id: str
    request: Resources
    containers: list[Candidate] = field(default_factory=list)


def _helps(agent: AgentRecord, alloc: Allocation, request: Resources,
           overcommit: float) -> bool:
    """Whether stopping ``alloc`` frees something ``request`` lacks on ``agent``."""
    free = placement.free_capacity(agent, overcommit)
    if request.cpu > free.cpu + _EPS and alloc.resources.cpu > 0:
        return True
    if request.memory_mb > free.memory_mb + _EPS and alloc.resources.memory_mb > 0:
        return True
    if gpu_count(request) and alloc.gpu_indices and not placement.gpus_fit(free, request):
        want = gpu_type_key(request.gpu_type) or ANY_GPU
        kinds = {gpu_type_key(g.type) for g in agent.gpus if g.index in alloc.gpu_indices}
        return want == ANY_GPU or want in kinds
    return False


def plan_idle(
    agents: Iterable[AgentRecord],
    requests: Sequence[Resources],
    candidates: Iterable[Candidate],
    spare: Mapping[str, int],
    overcommit: float = 1.0,
    *,
    freed: Mapping[str, Collection[str]] | None = None,
) -> IdleEviction | None:
    """The least recently used idle containers to stop so that one container of the
    waiting work fits, or None when stopping idle containers cannot make it fit.

    ``agents`` are those the work may go to (live, accepting work, spot allowed or not);
    ``requests`` its resources, then its GPU fallbacks; ``spare`` how many containers of
    each function may be stopped (its active containers less its ``min_containers``);
    ``freed`` the containers per agent already being stopped for this work.
    """
    freed = freed or {}
    by_agent: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_agent.setdefault(c.agent_id, []).append(c)
    for lru in by_agent.values():
        lru.sort(key=lambda c: (c.idle_since, c.container_id))
    pool = sorted(agents, key=lambda a: a.agent_id)
    for request in requests:
        best: tuple[tuple[int, float, str], IdleEviction] | None = None
        for agent in pool:
            record = without(agent, freed.get(agent.agent_id, ()))
            if placement.fit(record, request, overcommit) is not None:
                return IdleEviction(agent.agent_id, request)  # room is there (or coming)
            left = dict(spare)
            chosen: list[Candidate] = []
            for c in by_agent.get(agent.agent_id, []):
                alloc = record.allocations.get(c.container_id)
                if alloc is None or left.get(c.fn_key, 0) <= 0:
                    continue
                if not _helps(record, alloc, request, overcommit):
                    continue
                record = without(record, (c.container_id,))
                chosen.append(c)
                left[c.fn_key] -= 1
                if placement.fit(record, request, overcommit) is not None:
                    rank = (len(chosen), chosen[-1].idle_since, agent.agent_id)
                    if best is None or rank < best[0]:
                        best = (rank, IdleEviction(agent.agent_id, request, chosen))
                    break
        if best is not None:
            return best[1]
    return None


def plan(state: ClusterState, spec: FunctionSpec, overcommit: float,
         now: float | None = None) -> Eviction | None:
    """The fewest preemptible containers to stop on one on-demand agent so that ``spec``
    fits there, or None when no on-demand agent can make room."""
    now = time.time() if now is None else now
    best: Eviction | None = None
    for request in [spec.resources, *spec.gpu_fallbacks]:
        for agent_id, agent in state.agents.items():
            if agent.spot or agent.draining or agent.lost_at:
                continue
            if not state.has_fresh_heartbeat(agent_id, now):
                continue
            candidates = []
            for cid, alloc in agent.allocations.items():
                ref = state.function(alloc.fn_key)
                if ref is not None and not ref.spec.nonpreemptible:
                    candidates.append((cid, alloc))
            # Biggest first: the fewest stops free the most.
            candidates.sort(key=lambda c: (-c[1].resources.gpu_count, -c[1].resources.cpu,
                                           -c[1].resources.memory_mb, c[0]))
            freed: set[str] = set()
            chosen: list[str] = []
            if _fits(agent, request, freed, overcommit):
                return None  # it fits without stopping anything: placement will find it
            for cid, _alloc in candidates:
                freed.add(cid)
                chosen.append(cid)
                if _fits(agent, request, freed, overcommit):
                    if best is None or len(chosen) < len(best.container_ids):
                        best = Eviction(agent_id, list(chosen))
                    break
        if best is not None:
            return best
    return best
