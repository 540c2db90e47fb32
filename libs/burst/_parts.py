"""The parts of a local cluster: the state file that records them and the process table.

``burst up`` starts each part (nats-server, redis-server, the four services) in its own
process group and records it in ``$BURST_HOME/cluster.json``; ``burst down`` and the
supervisor (:mod:`burst._supervisor`) find the parts there. Every recorded process also
carries its start time, so a pid the kernel has since given to another program is never
signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from burst.exception import ConflictError, InternalError, InvalidError

STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
#: Stop order: the agent first (it stops its containers and reports them stopped while
#: billing still listens), then the other services, then the servers they talk through.
STOP_STAGES: tuple[tuple[str, ...], ...] = (
    ("agent",),
    ("gateway", "gateway-2", "scheduler", "scheduler-2", "billing"),
    ("nats", "nats-2", "nats-3", "redis"),
)
#: Seconds each stage gets between SIGTERM and SIGKILL. The agent's own shutdown may take
#: its containers' stop grace (5 s by default) plus a margin, so it gets more.
STOP_GRACE = {"agent": 15.0, "gateway": 6.0, "scheduler": 6.0, "billing": 6.0,
              "gateway-2": 6.0, "scheduler-2": 6.0}
DEFAULT_STOP_GRACE = 4.0
#: Seconds ``burst down`` waits, after SIGKILL, for every process to be gone.
STOP_VERIFY_TIMEOUT = 30.0


# ---- state ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Part:
    """One process ``burst up`` started."""

    name: str
    pid: int
    pgid: int
    #: Start time in clock ticks since boot (/proc/<pid>/stat); 0 where unknown.
    started: int
    log: str
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    #: How many times the supervisor restarted it after it exited.
    restarts: int = 0
    #: How it last exited ("killed by SIGKILL", "exit status 1"), when it did.
    last_exit: str = ""


@dataclasses.dataclass
class ClusterState:
    """The contents of ``cluster.json``."""

    home: str
    url: str
    started_at: float
    parts: list[Part]
    #: The process that restarts parts that exit (:mod:`burst._supervisor`); None when
    #: supervision is off.
    supervisor: Part | None = None

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_state(home: Path) -> ClusterState | None:
    path = state_path(home)
    try:
        raw = json.loads(path.read_text())
        parts = [Part(**p) for p in raw.pop("parts")]
        supervisor = raw.pop("supervisor", None)
        return ClusterState(
            parts=parts, supervisor=Part(**supervisor) if supervisor else None, **raw
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InvalidError(
            f"{path} is unreadable ({e}); if no cluster is running, delete it and retry"
        ) from None


def write_state(home: Path, state: ClusterState) -> None:
    path = state_path(home)
    # Written by `burst up`, then by the supervisor alone; a name per writer all the same.
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Exclusive lock on ``home`` so two ``burst up``/``down`` never interleave."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(
                f"another `burst up` or `burst down` is running for {home}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- processes -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    started: int
    zombie: bool


def proc_info(pid: int) -> ProcInfo | None:
    """What /proc says about ``pid``; None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    return ProcInfo(
        pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), started=int(rest[19]), zombie=rest[0] == "Z"
    )


def all_procs() -> list[ProcInfo]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_info(int(entry))) is not None:
            out.append(info)
    return out


def is_alive(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (zombies do not)."""
    info = proc_info(pid)
    if info is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: best effort
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return not info.zombie and (started == 0 or info.started == started)


def members(part: Part, procs: list[ProcInfo]) -> list[ProcInfo]:
    """Every live process of ``part``: its process group and every descendant of those.

    Only processes that started no earlier than the part count, so a recycled id never
    makes an unrelated program look like part of the cluster.
    """
    if not is_alive(part.pid, part.started):
        if part.started == 0:
            return []  # start time unknown and leader gone: its id may have been reused since
        if any(p.pid == part.pid and not p.zombie for p in procs):
            # The leader's id belongs to another process now; Linux reuses a process id only
            # when no group of that id is left, so the group is that process's, not ours.
            return []
    live = [p for p in procs if not p.zombie and p.started >= part.started]
    found = {p.pid: p for p in live if p.pgid == part.pgid or p.pid == part.pid}
    children: dict[int, list[ProcInfo]] = {}
    for p in live:
        children.setdefault(p.ppid, []).append(p)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return list(found.values())


def signal_all(procs: list[ProcInfo], sig: signal.Signals) -> None:
    """Send ``sig`` to the process groups of ``procs`` and to each of them still alive."""
    for pgid in {p.pgid for p in procs}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for p in procs:  # descendants that left the group
        if is_alive(p.pid, p.started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)


def alive(procs: list[ProcInfo]) -> list[ProcInfo]:
    """Those of ``procs`` still running (the same processes, not their recycled ids)."""
    return [p for p in procs if is_alive(p.pid, p.started)]


def wait_gone(procs: list[ProcInfo], timeout: float) -> list[ProcInfo]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    left = alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


def stop_parts(parts: list[Part], progress: Callable[[str], None] = lambda _: None) -> None:
    """Stop ``parts`` stage by stage: SIGTERM, a grace period, then SIGKILL.

    Raises :class:`InternalError` naming what is left when something survives SIGKILL.
    """
    by_name = {p.name: p for p in parts}
    stages = [[by_name[n] for n in stage if n in by_name] for stage in STOP_STAGES]
    stages.append([p for p in parts if not any(p.name in s for s in STOP_STAGES)])
    tracked: dict[str, list[ProcInfo]] = {}
    for stage in stages:
        if not stage:
            continue
        procs = all_procs()
        group = {p.name: members(p, procs) for p in stage}
        tracked.update(group)
        progress(f"stopping {', '.join(p.name for p in stage)}")
        everything = [proc for ms in group.values() for proc in ms]
        signal_all(everything, signal.SIGTERM)
        grace = max(STOP_GRACE.get(p.name, DEFAULT_STOP_GRACE) for p in stage)
        left = wait_gone(everything, grace)
        if left:
            signal_all(left, signal.SIGKILL)
    # Verify: nothing recorded, nor anything those processes started, is still running.
    procs = all_procs()
    for p in parts:
        tracked.setdefault(p.name, []).extend(members(p, procs))
    remaining = wait_gone([proc for ms in tracked.values() for proc in ms], STOP_VERIFY_TIMEOUT)
    if remaining:
        pids = ", ".join(str(p.pid) for p in remaining)
        raise InternalError(f"processes of the cluster survived SIGKILL: pids {pids}")
