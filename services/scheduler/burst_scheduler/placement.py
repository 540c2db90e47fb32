"""Choosing an agent for one container: pure functions, no I/O.

The choice made here is only a proposal. The claim (``claim.py``) re-runs :func:`fit` on
the agent record it compare-and-sets, so the GPU indices written are always computed from
the very revision being replaced: two schedulers deciding on stale views cannot both win.

Rules:

- An agent fits a request when its free CPU and memory (capacity times the overcommit
  factor, minus every allocation on it) cover the request, and it has ``gpu_count`` free
  GPUs of the requested type (all of one type). GPUs are never overcommitted.
- Only agents with a fresh heartbeat, not draining and not marked lost are candidates
  (:func:`live_agents`, :func:`accepts_work`).
- Among the agents that fit, the fullest wins, so lightly used machines drain and can be
  released. CPU-only work goes to machines without GPUs first, and GPU work to the machine
  that leaves the fewest GPUs of that type free (best fit keeps whole machines for
  multi-GPU requests).
- A function's fallbacks are tried in order: the first request that fits anywhere wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from burst_core.schemas import AgentHeartbeat, AgentRecord, Allocation, Resources

#: A request for this GPU type matches any type (all GPUs of one container share one type).
ANY_GPU = "ANY"


@dataclass(frozen=True)
class Free:
    """What is left on one agent."""

    cpu: float
    memory_mb: float
    gpus: Mapping[int, str]  # free GPU index -> normalised type


@dataclass(frozen=True)
class Choice:
    """A proposed placement: which agent, under which request, on which GPU indices."""

    agent_id: str
    resources: Resources
    gpu_indices: tuple[int, ...]
    spot: bool


def gpu_type_key(gpu_type: str | None) -> str:
    """Normalised GPU type: case and surrounding spaces never make two types differ."""
    return (gpu_type or "").strip().upper()


def gpu_count(res: Resources) -> int:
    """GPUs a request needs: a type without a count means one GPU (``gpu="A100"``)."""
    if res.gpu_count > 0:
        return res.gpu_count
    return 1 if gpu_type_key(res.gpu_type) else 0


def free_capacity(agent: AgentRecord, overcommit: float = 1.0) -> Free:
    used_cpu = sum(a.resources.cpu for a in agent.allocations.values())
    used_mem = sum(a.resources.memory_mb for a in agent.allocations.values())
    taken = {i for a in agent.allocations.values() for i in a.gpu_indices}
    gpus = {g.index: gpu_type_key(g.type) for g in agent.gpus
            if g.index not in taken and not g.unhealthy}
    return Free(
        cpu=agent.cpu * overcommit - used_cpu,
        memory_mb=agent.memory_mb * overcommit - used_mem,
        gpus=gpus,
    )


# Float sums of many 0.125-core allocations must not refuse an exact fit.
_EPS = 1e-9


def fit(agent: AgentRecord, request: Resources, overcommit: float = 1.0) -> tuple[int, ...] | None:
    """GPU indices to use if ``request`` fits on ``agent`` now (``()`` for CPU-only), else None.

    Among GPU types that match, the one with the fewest free GPUs is used (best fit); the
    lowest free indices of that type are taken.
    """
    return fit_free(free_capacity(agent, overcommit), request)


def gpus_fit(free: Free, request: Resources) -> bool:
    """Whether ``free`` has the GPUs ``request`` needs (CPU and memory aside)."""
    return fit_free(Free(float("inf"), float("inf"), free.gpus), request) is not None


def fit_free(free: Free, request: Resources) -> tuple[int, ...] | None:
    if request.cpu > free.cpu + _EPS or request.memory_mb > free.memory_mb + _EPS:
        return None
    need = gpu_count(request)
    if need == 0:
        return ()
    want = gpu_type_key(request.gpu_type) or ANY_GPU
    by_type: dict[str, list[int]] = {}
    for index, kind in free.gpus.items():
        if want in (ANY_GPU, kind):
            by_type.setdefault(kind, []).append(index)
    usable = [sorted(ix) for ix in by_type.values() if len(ix) >= need]
    if not usable:
        return None
    best = min(usable, key=lambda ix: (len(ix), ix[0]))
    return tuple(best[:need])


def fullness(agent: AgentRecord, overcommit: float = 1.0) -> float:
    """Fraction of the dominant resource (CPU or memory) already allocated, 0..1+."""
    return _fullness(agent, free_capacity(agent, overcommit), overcommit)


def _fullness(agent: AgentRecord, free: Free, overcommit: float) -> float:
    cpu_cap = agent.cpu * overcommit
    mem_cap = agent.memory_mb * overcommit
    cpu_used = (cpu_cap - free.cpu) / cpu_cap if cpu_cap > 0 else 1.0
    mem_used = (mem_cap - free.memory_mb) / mem_cap if mem_cap > 0 else 1.0
    return max(cpu_used, mem_used)


def choose(
    request: Resources,
    agents: Iterable[AgentRecord],
    overcommit: float = 1.0,
    *,
    allow_spot: bool = True,
    exclude: frozenset[str] = frozenset(),
) -> Choice | None:
    """The agent ``request`` should go to, or None when it fits nowhere."""
    need_gpus = gpu_count(request) > 0
    best: tuple[tuple[object, ...], Choice] | None = None
    for agent in agents:
        if (not accepts_work(agent) or agent.agent_id in exclude
                or (agent.spot and not allow_spot)):
            continue
        free = free_capacity(agent, overcommit)
        indices = fit_free(free, request)
        if indices is None:
            continue
        full = _fullness(agent, free, overcommit)
        if need_gpus:
            kind = free.gpus[indices[0]]
            left = sum(1 for k in free.gpus.values() if k == kind) - len(indices)
            key: tuple[object, ...] = (left, -full, agent.agent_id)
        else:
            key = (len(agent.gpus) > 0, -full, agent.agent_id)
        choice = Choice(agent.agent_id, request, indices, agent.spot)
        if best is None or key < best[0]:
            best = (key, choice)
    return best[1] if best else None


def choose_first(
    requests: Sequence[Resources],
    agents: Iterable[AgentRecord],
    overcommit: float = 1.0,
    *,
    allow_spot: bool = True,
    exclude: frozenset[str] = frozenset(),
) -> Choice | None:
    """Try ``requests`` in order (a function's resources, then its GPU fallbacks)."""
    pool = list(agents)
    for request in requests:
        choice = choose(request, pool, overcommit, allow_spot=allow_spot, exclude=exclude)
        if choice is not None:
            return choice
    return None


def with_allocation(
    agent: AgentRecord, container_id: str, fn_key: str, request: Resources,
    gpu_indices: Sequence[int], placed_at: float, shell_call_id: str = "",
) -> AgentRecord:
    """A copy of ``agent`` with one more allocation (the record a claim writes)."""
    allocations = dict(agent.allocations)
    allocations[container_id] = Allocation(
        fn_key=fn_key, resources=request, gpu_indices=list(gpu_indices), placed_at=placed_at,
        shell_call_id=shell_call_id,
    )
    return replace_allocations(agent, allocations)


def without_allocation(agent: AgentRecord, container_id: str) -> AgentRecord:
    allocations = {k: v for k, v in agent.allocations.items() if k != container_id}
    return replace_allocations(agent, allocations)


def replace_allocations(agent: AgentRecord, allocations: dict[str, Allocation]) -> AgentRecord:
    return msgspec.structs.replace(agent, allocations=allocations)


def accepts_work(agent: AgentRecord) -> bool:
    """Whether new containers may be placed on ``agent`` (not draining, not lost)."""
    return not agent.draining and not agent.lost_at


def is_fresh(heartbeat: AgentHeartbeat | None, now: float, timeout: float) -> bool:
    """An agent is alive while its last heartbeat is younger than ``timeout``.

    Heartbeat times are the agent's wall clock: clocks are assumed synchronised (NTP) to
    well within the timeout.
    """
    return heartbeat is not None and now - heartbeat.at <= timeout


def live_agents(
    agents: Mapping[str, AgentRecord],
    heartbeats: Mapping[str, AgentHeartbeat],
    now: float,
    timeout: float,
) -> list[AgentRecord]:
    """Agents with a record, a fresh heartbeat and not marked lost, in a stable order."""
    return [agents[a] for a in sorted(agents)
            if not agents[a].lost_at and is_fresh(heartbeats.get(a), now, timeout)]
