"""Whether any agent of the cluster could ever hold a function's container (were it
empty, with its healthy GPUs), and if not, why: shared by the gateway (``burst deploy`` and
``burst run`` warn) and the scheduler (``burst app status`` says so, and calls of such a
function fail after ``BURST_UNSATISFIABLE_TIMEOUT``)."""

from __future__ import annotations

from collections.abc import Iterable

from burst_core.schemas import AgentRecord, Resources

ANY_GPU = "ANY"


def _key(gpu_type: str | None) -> str:
    return (gpu_type or "").strip().upper()


def _count(r: Resources) -> int:
    if r.gpu_count > 0:
        return r.gpu_count
    return 1 if _key(r.gpu_type) else 0


def wants(r: Resources) -> str:
    """``gpu="H200:2"`` or ``cpu=4, memory=8192 MiB``: a request in the words of the SDK."""
    parts = []
    if _count(r):
        parts.append(f'gpu="{r.gpu_type or "any"}:{_count(r)}"')
    parts.append(f"cpu={r.cpu:g}")
    parts.append(f"memory={r.memory_mb} MiB")
    return ", ".join(parts)


def _gpus_of(agent: AgentRecord, want: str) -> int:
    healthy = [g for g in agent.gpus if not g.unhealthy]
    if want == ANY_GPU:
        by: dict[str, int] = {}
        for g in healthy:
            by[_key(g.type)] = by.get(_key(g.type), 0) + 1
        return max(by.values(), default=0)
    return sum(1 for g in healthy if _key(g.type) == want)


def could_hold(agent: AgentRecord, r: Resources, overcommit: float = 1.0) -> bool:
    """Whether ``agent``, empty, could hold a container asking ``r``."""
    if r.cpu > agent.cpu * overcommit + 1e-9 or r.memory_mb > agent.memory_mb * overcommit:
        return False
    need = _count(r)
    return need == 0 or _gpus_of(agent, _key(r.gpu_type) or ANY_GPU) >= need


def describe(agent: AgentRecord) -> str:
    by: dict[str, int] = {}
    for g in agent.gpus:
        if not g.unhealthy:
            by[g.type] = by.get(g.type, 0) + 1
    gpus = ", ".join(f"{n}×{t}" for t, n in sorted(by.items())) or "no GPU"
    bad = sum(1 for g in agent.gpus if g.unhealthy)
    if bad:
        gpus += f" (and {bad} unhealthy)"
    return f"{gpus}, {agent.cpu:g} CPU, {agent.memory_mb} MiB"


def shortfall(requests: list[Resources], agents: Iterable[AgentRecord],
              overcommit: float = 1.0) -> str:
    """'' when some live agent could hold one of ``requests`` (a function's resources,
    then its GPU fallbacks); else why none can, naming the largest agent. With no agent
    at all, '' too: a cluster whose agents have not joined yet waits for them."""
    live = [a for a in agents if not a.lost_at]
    if not live:
        return ""
    for r in requests:
        if any(could_hold(a, r, overcommit) for a in live):
            return ""
    asked = " or ".join(wants(r) for r in requests)
    first = requests[0]
    want = _key(first.gpu_type) or ANY_GPU
    largest = max(live, key=lambda a: (_gpus_of(a, want) if _count(first) else 0,
                                       a.cpu, a.memory_mb, a.agent_id))
    return (f"no agent can hold {asked}: the largest agent, {largest.agent_id}, has "
            f"{describe(largest)}")
