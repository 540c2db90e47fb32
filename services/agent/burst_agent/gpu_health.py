"""GPU health from NVML: a GPU that reports an Xid error (one that is not the program's own
fault) or an uncorrectable ECC error is unhealthy, for good (until the agent restarts): the
agent marks it in its record and the scheduler places nothing on it. GPU memory held by a
process of a container that has finished (its ``BURST_CONTAINER_ID``), or of no container
at all, is detected and reported (a warning in the agent's log and on the GPU's record).

``nvml`` is the ``pynvml`` module, or a stand-in with the same functions (tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burst_core import logs
from burst_core.schemas import GpuInfo

log = logs.get("burst.agent.gpu_health")

#: Xid errors a program causes by itself (bad memory access, an exception in its kernel,
#: a reset of its channel, a preempted context): they say nothing about the GPU. Every
#: other Xid marks the GPU unhealthy (as NVIDIA's Kubernetes device plugin does).
PROGRAM_XIDS = frozenset({13, 31, 43, 45, 68, 109})


@dataclass
class Leftover:
    """GPU memory held by a process no running container owns."""
    gpu: int
    pid: int
    used_mib: int
    container_id: str  # the finished container it came from; "" when none

    def describe(self) -> str:
        who = (f"finished container {self.container_id}" if self.container_id
               else "a process of no container")
        return f"{self.used_mib} MiB held by {who} (pid {self.pid})"


def container_of(pid: int) -> str:
    """The container a host process belongs to (its ``BURST_CONTAINER_ID``), or ''."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return ""
    for kv in raw.split(b"\0"):
        if kv.startswith(b"BURST_CONTAINER_ID="):
            return kv.split(b"=", 1)[1].decode(errors="replace")
    return ""


@dataclass
class Health:
    nvml: Any
    gpus: list[GpuInfo]
    #: Finds the container of a pid no running container owns (``/proc``'s environ).
    owner: Callable[[int], str] = container_of
    _events: Any = None
    _reported: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        n = self.nvml
        try:
            self._events = n.nvmlEventSetCreate()
            for g in self.gpus:
                n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(g.index),
                                           n.nvmlEventTypeXidCriticalError, self._events)
        except Exception as e:  # no Xid events on this driver: ECC still checked
            log.warning("nvml_xid_events_unavailable", error=repr(e))
            self._events = None

    def _xids(self) -> dict[int, list[int]]:
        """Xid errors since the last look, per GPU index (not waiting for any)."""
        out: dict[int, list[int]] = {}
        if self._events is None:
            return out
        n = self.nvml
        for _ in range(1000):  # a bound: each look drains what has queued
            try:
                ev = n.nvmlEventSetWait(self._events, 0)
            except Exception:  # NVML_ERROR_TIMEOUT: nothing more queued
                break
            try:
                index = int(n.nvmlDeviceGetIndex(ev.device))
            except Exception:
                continue
            out.setdefault(index, []).append(int(ev.eventData))
        return out

    def check(self, running: dict[int, str]) -> tuple[dict[int, str], list[Leftover]]:
        """(GPU index -> why it became unhealthy, for GPUs newly found so; memory left
        behind, newly found). ``running``: host pid -> id of each running GPU container."""
        n = self.nvml
        bad: dict[int, str] = {}
        for index, xids in self._xids().items():
            fatal = [x for x in xids if x not in PROGRAM_XIDS]
            if fatal:
                bad[index] = f"Xid {', '.join(str(x) for x in fatal)} (NVML)"
        live_ids = set(running.values())
        left: list[Leftover] = []
        for g in self.gpus:
            h = n.nvmlDeviceGetHandleByIndex(g.index)
            if g.index not in bad and not g.unhealthy:
                try:
                    ecc = int(n.nvmlDeviceGetTotalEccErrors(
                        h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC))
                except Exception:  # ECC off or not supported on this GPU
                    ecc = 0
                if ecc > 0:
                    bad[g.index] = f"{ecc} uncorrectable ECC error(s) (NVML)"
            try:
                procs = n.nvmlDeviceGetComputeRunningProcesses(h)
            except Exception:
                procs = []
            for p in procs:
                if p.pid in running:
                    continue
                cid = self.owner(p.pid)
                if cid in live_ids:
                    continue  # a running container's process the agent did not list
                key = (g.index, p.pid)
                if key in self._reported:
                    continue
                self._reported.add(key)
                left.append(Leftover(g.index, p.pid, int((p.usedGpuMemory or 0) >> 20), cid))
        for index, why in bad.items():
            log.error("gpu_unhealthy", gpu=index, reason=why)
        for lo in left:
            log.warning("gpu_memory_left", gpu=lo.gpu, pid=lo.pid, used_mib=lo.used_mib,
                        container_id=lo.container_id, detail=lo.describe())
        return bad, left
