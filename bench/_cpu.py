"""CPU time and memory of a local cluster's processes, part by part, from /proc.

    cpu = ClusterCpu(home)
    before = cpu.sample()
    ...  # the work measured
    used = cpu.since(before)    # {"gateway": 1.2, "agent": 3.4, "containers": 2.0, ...} seconds

A part is what `burst up` started (cluster.json): its own process and, for the agent,
``containers``: every process under it (the containers, their sandboxes, the zygote).
``client`` is the calling process. Times are user + system CPU seconds; a process that
exited between two samples loses what it used after the first one (the agent's containers
live through a map: the benchmark keeps them warm).
"""

from __future__ import annotations

import os
from pathlib import Path

from burst import _parts

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` used so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / TICK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 when it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return pages * PAGE / 2**20


class ClusterCpu:
    def __init__(self, home: Path) -> None:
        state = _parts.read_state(home)
        if state is None:
            raise RuntimeError(f"no cluster.json in {home}")
        self.state = state

    def pids(self) -> dict[str, list[int]]:
        """Processes by part, now (containers come and go)."""
        procs = _parts.all_procs()
        out: dict[str, list[int]] = {"client": [os.getpid()]}
        for part in self.state.parts:
            found = [p.pid for p in _parts.members(part, procs)]
            if part.name == "agent":
                out["agent"] = [part.pid]
                out["containers"] = [p for p in found if p != part.pid]
            else:
                out[part.name] = found
        return out

    def sample(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids}
                for name, pids in self.pids().items()}

    def since(self, before: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds per part since ``before`` (processes new since then count whole)."""
        now = self.sample()
        return {name: sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in cur.items())
                for name, cur in now.items()}

    def rss(self) -> dict[str, float]:
        """Resident memory per part in MiB, now."""
        return {name: round(sum(rss_mib(p) for p in pids), 1)
                for name, pids in self.pids().items()}


def descendants(root: int, exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Every process under ``root`` (not ``root``), leaving out ``exclude`` and what is
    under them."""
    children: dict[int, list[int]] = {}
    for p in _parts.all_procs():
        if not p.zombie:
            children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in exclude:
                out.append(child)
                todo.append(child)
    return out


class PeakRss:
    """The highest resident memory of this process while in the ``with`` block (MiB),
    sampled every ``every`` seconds from a thread."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.every = every
        self.before = self.peak = rss_mib(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mib(os.getpid()))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_mib(os.getpid())
        self.peak = max(self.peak, self.after)

    def summary(self) -> dict[str, float]:
        return {"before_mib": round(self.before, 1), "peak_mib": round(self.peak, 1),
                "after_mib": round(self.after, 1)}
