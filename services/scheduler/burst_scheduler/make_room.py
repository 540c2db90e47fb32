"""Making room for on-demand work by preempting preemptible containers.

A ``nonpreemptible`` function runs on on-demand agents only. When none has room, the
scheduler may stop preemptible containers (every function is preemptible unless marked
otherwise, as in Modal) on one on-demand agent so the function fits there: the agent
hands their in-flight inputs back at once, their claims are released, and the waiting
function is placed on the next pass. Among agents where that works, the one needing the
fewest stops wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from burst_core.schemas import AgentRecord, FunctionSpec, Resources
from burst_scheduler.state import ClusterState


@dataclass(frozen=True)
class Eviction:
    agent_id: str
    container_ids: list[str]


def _fits(agent: AgentRecord, request: Resources, freed: set[str], overcommit: float) -> bool:
    kept = [a for cid, a in agent.allocations.items() if cid not in freed]
    cpu_free = agent.cpu * overcommit - sum(a.resources.cpu for a in kept)
    mem_free = agent.memory_mb * overcommit - sum(a.resources.memory_mb for a in kept)
    if cpu_free + 1e-9 < request.cpu or mem_free < request.memory_mb:
        return False
    if request.gpu_count:
        used = {i for a in kept for i in a.gpu_indices}
        free = [g for g in agent.gpus if g.type == request.gpu_type and g.index not in used]
        if len(free) < request.gpu_count:
            return False
    return True


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
