"""This agent's figures for ``/metrics``: per function calls, errors, latency, queue
time and cold starts (cumulative since the agent started), containers by state and inputs
in flight; the machine's CPU and memory, each GPU's utilisation and memory from NVML; and
each container's CPU and memory use (shown by ``burst container list``).

They go out every ``BURST_METRICS_INTERVAL`` over core NATS (``AgentMetrics``; the agent
opens no port), and the gateway exports them. Labels stay bounded: per function, never
per call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from burst_core import logs, metrics
from burst_core.schemas import (
    AgentMetrics,
    ContainerView,
    FunctionFigures,
    GpuFigures,
    GpuInfo,
    Output,
)

log = logs.get("burst.agent.figures")

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds of ``pids`` (from /proc; gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _TICKS


def _host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the machine since boot."""
    try:
        parts = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
    return sum(parts) - idle, sum(parts)


def _host_memory() -> tuple[float, float]:
    """(used, total) MiB of the machine."""
    info: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = float(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    total = info.get("MemTotal", 0.0)
    return total - info.get("MemAvailable", total), total


def gpu_figures(nvml: Any, gpus: list[GpuInfo], container_of_pid: dict[int, str],
                ) -> list[GpuFigures]:
    """Each GPU's utilisation and memory from NVML (``nvml``: the ``pynvml`` module or a
    stand-in with its functions), and the memory of each container's processes on it."""
    out: list[GpuFigures] = []
    for g in gpus:
        h = nvml.nvmlDeviceGetHandleByIndex(g.index)
        util = nvml.nvmlDeviceGetUtilizationRates(h)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        fig = GpuFigures(index=g.index, type=g.type, utilisation=float(util.gpu),
                         memory_used_mb=mem.used / (1 << 20),
                         memory_total_mb=mem.total / (1 << 20))
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(h)
        except Exception:  # not every driver maps processes
            procs = []
        for p in procs:
            cid = container_of_pid.get(int(p.pid))
            if cid is not None and p.usedGpuMemory is not None:
                fig.containers[cid] = fig.containers.get(cid, 0.0) + p.usedGpuMemory / (1 << 20)
        out.append(fig)
    return out


class Figures:
    """What the agent counts as it goes; :meth:`snapshot` adds what is true now."""

    def __init__(self, agent_id: str, gpus: list[GpuInfo], nvml: Any = None,
                 enabled: bool = True) -> None:
        self.agent_id = agent_id
        #: Off (``BURST_METRICS=0``): nothing is counted.
        self.enabled = enabled
        self.gpus = gpus
        self.nvml = nvml
        self.functions: dict[str, FunctionFigures] = {}
        self._cpu = _host_cpu()
        #: Per container: (CPU seconds, when) at the last look, for the cores it used.
        self._last: dict[str, tuple[float, float]] = {}
        #: Per container: (cores, MiB) at the last look (its heartbeat view carries them).
        self.usage: dict[str, tuple[float, float]] = {}
        #: Outputs not yet folded into the histograms: (function key, status, latency,
        #: queue time); an append on the hot path, folded by :meth:`fold` off it.
        self._pending: list[tuple[str, str, float, float]] = []
        self._cold: list[tuple[str, float]] = []

    def _fn(self, fn_key: str) -> FunctionFigures:
        f = self.functions.get(fn_key)
        if f is None:
            f = self.functions[fn_key] = FunctionFigures(
                latency=metrics.new_histogram(), queue=metrics.new_histogram(),
                cold_start=metrics.new_histogram())
        return f

    def output(self, fn_key: str, out: Output, accepted_at: float = 0.0) -> None:
        """An output this agent stored (a duplicate is not counted): kept as it is, to be
        folded in at the next :meth:`fold` (the call's path pays an append only)."""
        if not self.enabled:
            return
        started = out.started_at
        self._pending.append((fn_key, out.status,
                              out.finished_at - started if started and out.finished_at else -1.0,
                              started - accepted_at if started and accepted_at else -1.0))

    def web(self, fn_key: str, status: str, latency: float, queue: float) -> None:
        """A web request that ran in a container of ``fn_key`` ended (``status``:
        success or failure): counted with the function's calls, latency and queue time."""
        if self.enabled:
            self._pending.append((fn_key, status, max(0.0, latency), max(0.0, queue)))

    def fold(self) -> None:
        """Count the outputs stored since the last fold (safe in a thread: the list is
        swapped whole, and only this method touches the histograms' counts)."""
        pending, self._pending = self._pending, []
        cold, self._cold = self._cold, []
        for fn_key, seconds in cold:
            f = self._fn(fn_key)
            f.cold_starts += 1
            if f.cold_start is not None:
                metrics.observe(f.cold_start, seconds)
        for fn_key, status, latency, queue in pending:
            f = self._fn(fn_key)
            f.calls[status] = f.calls.get(status, 0) + 1
            if latency >= 0 and f.latency is not None:
                metrics.observe(f.latency, latency)
            if queue >= 0 and f.queue is not None:
                metrics.observe(f.queue, queue)

    def cold_start(self, fn_key: str, seconds: float) -> None:
        """A container became ready ``seconds`` after its placement arrived."""
        if self.enabled:
            self._cold.append((fn_key, seconds))

    def sample(self, handles: dict[str, Any]) -> None:
        """Each container's CPU (cores, since the last look) and memory (MiB) now, from
        its runtime handle's ``usage()`` (CPU seconds, memory bytes) where it has one."""
        now = time.monotonic()
        seen: dict[str, tuple[float, float]] = {}
        for cid, handle in handles.items():
            got = handle.usage() if handle is not None and hasattr(handle, "usage") else None
            if got is None:
                continue
            cpu_s, mem = got
            last = self._last.get(cid)
            seen[cid] = (cpu_s, now)
            cores = ((cpu_s - last[0]) / (now - last[1])
                     if last is not None and now > last[1] else 0.0)
            self.usage[cid] = (round(max(0.0, cores), 3), round(mem / (1 << 20), 1))
        self._last = seen
        self.usage = {cid: u for cid, u in self.usage.items() if cid in seen}

    def snapshot(self, views: list[ContainerView],
                 pids: dict[int, str] | None = None) -> AgentMetrics:
        self.fold()
        busy, total = _host_cpu()
        b0, t0 = self._cpu
        self._cpu = (busy, total)
        cpu = 100.0 * (busy - b0) / (total - t0) if total > t0 else 0.0
        used, mem_total = _host_memory()
        functions: dict[str, FunctionFigures] = {}
        for key, f in self.functions.items():
            functions[key] = FunctionFigures(calls=dict(f.calls), latency=f.latency,
                                             queue=f.queue, cold_starts=f.cold_starts,
                                             cold_start=f.cold_start)
        for v in views:
            f = functions.setdefault(v.fn_key, FunctionFigures())
            f.containers[v.state] = f.containers.get(v.state, 0) + 1
            f.in_flight += v.in_flight
        gpus: list[GpuFigures] = []
        if self.nvml is not None and self.gpus:
            try:
                gpus = gpu_figures(self.nvml, self.gpus, pids or {})
            except Exception as e:  # a driver hiccup costs this interval's GPU figures
                log.warning("nvml_read_failed", error=repr(e))
        return AgentMetrics(agent_id=self.agent_id, at=time.time(), cpu_percent=round(cpu, 2),
                            memory_used_mb=round(used, 1), memory_total_mb=round(mem_total, 1),
                            gpus=gpus, functions=functions)
