"""An index of free capacity, so a placement decision never scans every agent.

:func:`placement.choose` walks all agents and recomputes each one's free capacity: fine for
ten machines, about 5 ms per decision for a thousand. :class:`CapacityIndex` keeps, per
agent, what is free (computed once per record change) and, in sorted lists, the order in
which :func:`placement.choose` would prefer agents:

- CPU-only work: one list keyed ``(has GPUs, -fullness, agent id)``;
- GPU work: one list per GPU type, keyed ``(free GPUs of that type, -fullness, agent id)``,
  holding agents with at least one such GPU free. A request for ``n`` GPUs starts at the
  first entry with ``n`` free (bisect) and walks forward: the first agent that also has the
  CPU and memory, is live, and is allowed (spot, excluded) is the best fit.

The result is the same choice :func:`placement.choose` makes (a unit test compares the two
on random clusters). Fullness here is measured against raw capacity; the overcommit
factor scales every agent's capacity alike, so it changes no order, only the CPU and memory
fit, which is checked at query time.

The index is updated incrementally by :meth:`ClusterState.apply_agent` (one remove and one
insert per list the agent is in, each a bisect). Agents that accept no work (draining,
lost) are left out; liveness (a fresh heartbeat) changes with time, so it is checked while
walking. Like the rest of the view, the index only proposes: the claim re-checks the fit on
the record it compare-and-sets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from burst_core.schemas import AgentRecord, Resources
from burst_scheduler.placement import (
    _EPS,
    ANY_GPU,
    Choice,
    accepts_work,
    gpu_count,
    gpu_type_key,
)

_CpuKey = tuple[bool, float, str]
_GpuKey = tuple[int, float, str]


@dataclass(frozen=True, slots=True)
class _Entry:
    """What one agent has free, computed once per record revision."""

    agent_id: str
    spot: bool
    cpu: float  # capacity
    memory_mb: float
    used_cpu: float
    used_memory_mb: float
    gpus: dict[str, list[int]]  # normalised type -> free indices, ascending
    has_gpus: bool
    fullness: float

    def fits(self, request: Resources, overcommit: float) -> bool:
        return (request.cpu <= self.cpu * overcommit - self.used_cpu + _EPS
                and request.memory_mb <= self.memory_mb * overcommit - self.used_memory_mb + _EPS)


def _entry(agent: AgentRecord) -> _Entry:
    used_cpu = 0.0
    used_mem = 0.0
    taken: set[int] = set()
    for a in agent.allocations.values():
        used_cpu += a.resources.cpu
        used_mem += a.resources.memory_mb
        taken.update(a.gpu_indices)
    gpus: dict[str, list[int]] = {}
    for g in agent.gpus:
        if g.index not in taken and not g.unhealthy:
            gpus.setdefault(gpu_type_key(g.type), []).append(g.index)
    for ix in gpus.values():
        ix.sort()
    cpu_full = used_cpu / agent.cpu if agent.cpu > 0 else 1.0
    mem_full = used_mem / agent.memory_mb if agent.memory_mb > 0 else 1.0
    return _Entry(agent.agent_id, agent.spot, agent.cpu, agent.memory_mb, used_cpu, used_mem,
                  gpus, bool(agent.gpus), max(cpu_full, mem_full))


def _remove(keys: list[tuple[object, ...]], key: tuple[object, ...]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


class CapacityIndex:
    """Free capacity of every agent that accepts work, ordered for best-fit choices."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._cpu: list[_CpuKey] = []
        self._gpu: dict[str, list[_GpuKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # ---- updates ---------------------------------------------------------------------
    def update(self, agent_id: str, record: AgentRecord | None) -> None:
        """Replace what the index holds for ``agent_id`` (None: the agent is gone)."""
        old = self._entries.pop(agent_id, None)
        if old is not None:
            _remove(self._cpu, (old.has_gpus, -old.fullness, agent_id))  # type: ignore[arg-type]
            for kind, ix in old.gpus.items():
                keys = self._gpu[kind]
                _remove(keys, (len(ix), -old.fullness, agent_id))  # type: ignore[arg-type]
                if not keys:
                    del self._gpu[kind]
        if record is None or not accepts_work(record):
            return
        new = _entry(record)
        self._entries[agent_id] = new
        bisect.insort(self._cpu, (new.has_gpus, -new.fullness, agent_id))
        for kind, ix in new.gpus.items():
            bisect.insort(self._gpu.setdefault(kind, []), (len(ix), -new.fullness, agent_id))

    # ---- queries ---------------------------------------------------------------------
    def choose(
        self,
        request: Resources,
        live: Callable[[str], bool],
        overcommit: float = 1.0,
        *,
        allow_spot: bool = True,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Choice | None:
        """The agent ``request`` should go to (as :func:`placement.choose`), or None.

        ``live(agent_id)`` says whether the agent's heartbeat is fresh.
        """

        def usable(e: _Entry) -> bool:
            return (e.agent_id not in exclude and (allow_spot or not e.spot)
                    and e.fits(request, overcommit) and live(e.agent_id))

        need = gpu_count(request)
        if need == 0:
            for _, _, agent_id in self._cpu:
                e = self._entries[agent_id]
                if usable(e):
                    return Choice(agent_id, request, (), e.spot)
            return None
        want = gpu_type_key(request.gpu_type) or ANY_GPU
        kinds = list(self._gpu) if want == ANY_GPU else [want]
        best: tuple[tuple[int, float, str, int], _Entry, str] | None = None
        for kind in kinds:
            keys = self._gpu.get(kind)
            if not keys:
                continue
            for i in range(bisect.bisect_left(keys, (need,)), len(keys)):
                count, neg_full, agent_id = keys[i]
                if best is not None and (count, neg_full, agent_id) > best[0][:3]:
                    break  # every later entry of this type ranks below the best so far
                e = self._entries[agent_id]
                if usable(e):
                    rank = (count, neg_full, agent_id, e.gpus[kind][0])
                    if best is None or rank < best[0]:
                        best = (rank, e, kind)
                    break
        if best is None:
            return None
        _, e, kind = best
        return Choice(e.agent_id, request, tuple(e.gpus[kind][:need]), e.spot)

    def choose_first(
        self,
        requests: Sequence[Resources],
        live: Callable[[str], bool],
        overcommit: float = 1.0,
        *,
        allow_spot: bool = True,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Choice | None:
        """Try ``requests`` in order (a function's resources, then its GPU fallbacks)."""
        for request in requests:
            choice = self.choose(request, live, overcommit, allow_spot=allow_spot,
                                 exclude=exclude)
            if choice is not None:
                return choice
        return None
