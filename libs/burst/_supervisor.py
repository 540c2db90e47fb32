"""The local cluster's supervisor: restarts the parts of ``burst up`` that exit.

``burst up`` starts it (``python -m burst._supervisor HOME``) in a process group of its
own once the cluster is healthy, and hands it each part's command and environment on its
standard input (never on disk: the environment may hold the user's secrets). It records
itself in ``cluster.json`` and is from then on the only writer of that file.

A part whose main process exits, however it exits, is restarted with the same command (so
NATS and Redis come back on the same ports with the same store directory) after a backoff:
``backoff`` seconds, doubled for each further exit of a part that ran less than
``backoff_max`` seconds, at most ``backoff_max``. What is left of the part's process group
(an agent's containers) is killed first. The restart's pid, process group, count and the
way the part exited are written to ``cluster.json`` at once, where ``burst status`` shows
them and ``burst down`` finds them.

``burst down`` stops the supervisor first (:func:`stop`): on SIGTERM it finishes the
restart in hand, records it and exits, so nothing it started goes unrecorded; then the
parts are stopped as recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from burst._parts import (
    ClusterState,
    Part,
    ProcInfo,
    all_procs,
    is_alive,
    members,
    proc_info,
    read_state,
    signal_all,
    state_path,
    wait_gone,
    write_state,
)
from burst.exception import InvalidError, UnavailableError

SUPERVISOR = "supervisor"
#: Seconds ``burst up`` waits for the supervisor to record itself.
START_TIMEOUT = 20.0
#: Seconds ``burst down`` gives the supervisor to exit on SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds the supervisor waits for what is left of an exited part to be gone.
LEFTOVER_TIMEOUT = 5.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class SupervisorSettings:
    """How ``burst up`` supervises its parts, from ``BURST_SUPERVISE*`` variables."""

    #: ``BURST_SUPERVISE``: restart parts that exit; off (0), a part that exits stays down.
    enabled: bool = True
    #: ``BURST_SUPERVISE_BACKOFF``: seconds before a part that exited is restarted; doubled
    #: for each further exit of a part that ran less than ``backoff_max``.
    backoff: float = 0.5
    #: ``BURST_SUPERVISE_BACKOFF_MAX``: the longest wait before a restart.
    backoff_max: float = 30.0
    #: ``BURST_SUPERVISE_INTERVAL``: seconds between two looks at the parts.
    interval: float = 0.1
    #: ``BURST_CREDENTIAL_CHECK_INTERVAL``: seconds between two looks for agent users whose
    #: credentials expired (``burst agent token --credential-expires``); each one found
    #: is removed from NATS's users and NATS reloads them, which cuts the agent off.
    credential_check_interval: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SupervisorSettings:
        """Read the settings; a bad value raises :class:`InvalidError` naming it."""
        values: dict[str, Any] = {}
        raw = env.get("BURST_SUPERVISE")
        if raw is not None:
            if raw.strip().lower() not in _TRUE + _FALSE:
                raise InvalidError(
                    f"invalid BURST_SUPERVISE={raw!r}: use 1 (restart parts that exit) or 0 "
                    "(leave them down)"
                )
            values["enabled"] = raw.strip().lower() in _TRUE
        for name in ("backoff", "backoff_max", "interval", "credential_check_interval"):
            key = (f"BURST_{name.upper()}" if name == "credential_check_interval"
                   else f"BURST_SUPERVISE_{name.upper()}")
            if (raw := env.get(key)) is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise InvalidError(f"invalid {key}={raw!r}: use a number of seconds above 0")
            values[name] = value
        settings = cls(**values)
        if settings.backoff_max < settings.backoff:
            raise InvalidError(
                f"invalid BURST_SUPERVISE_BACKOFF_MAX={settings.backoff_max:g}: it must be at "
                f"least BURST_SUPERVISE_BACKOFF ({settings.backoff:g})"
            )
        return settings

    def delay(self, quick_exits: int) -> float:
        """Seconds before the restart that follows ``quick_exits`` quick exits in a row."""
        return min(self.backoff_max, self.backoff * 2.0 ** min(quick_exits, 60))


@dataclasses.dataclass(frozen=True)
class Command:
    """How to start one part again."""

    argv: list[str]
    env: dict[str, str]


def _running_for(started: int) -> float:
    """Seconds since a process started (its start time in clock ticks after boot); 0 when
    unknown."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK")) if started else 0.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"  # not our child (started by `burst up`): its status went to init
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Watches the parts of one cluster and restarts those that exit."""

    def __init__(self, home: Path, settings: SupervisorSettings,
                 commands: dict[str, Command]) -> None:
        self.home = home
        self.settings = settings
        self.commands = commands
        self.stopping = False
        self.state: ClusterState | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        #: name -> monotonic time its restart is due (parts waiting out their backoff)
        self.due: dict[str, float] = {}
        #: name -> how many times in a row it exited after running less than backoff_max
        self.quick_exits: dict[str, int] = {}
        #: name -> monotonic time it was (re)started, or this supervisor took it over
        self.since: dict[str, float] = {}

    def stop(self, *_: object) -> None:
        """Stop after the step in hand (a signal handler: it only sets a flag)."""
        self.stopping = True

    def log(self, message: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)

    def take_over(self) -> None:
        """Record this process in ``cluster.json``: ``burst up`` waits for that."""
        state = read_state(self.home)
        if state is None:
            raise UnavailableError(f"{state_path(self.home)} is gone: no cluster to supervise")
        me = proc_info(os.getpid())
        state.supervisor = Part(
            name=SUPERVISOR, pid=os.getpid(), pgid=os.getpgrp(),
            started=me.started if me else 0,
            log=str(self.home / "logs" / f"{SUPERVISOR}.log"),
        )
        self.state = state
        now = time.monotonic()
        self.since = {p.name: now - _running_for(p.started) for p in state.parts}
        write_state(self.home, state)
        self.log(f"supervising {', '.join(p.name for p in state.parts)}: restarts after "
                 f"{self.settings.backoff:g} s, doubling up to {self.settings.backoff_max:g} s")

    def run(self) -> None:
        self.take_over()
        next_credentials = time.monotonic()
        while not self.stopping:
            self.check()
            if time.monotonic() >= next_credentials:
                next_credentials = time.monotonic() + self.settings.credential_check_interval
                self.expire_credentials()
            time.sleep(self.settings.interval)
        self.log("stopping: the parts are left to `burst down`")

    def expire_credentials(self, now: float | None = None) -> list[str]:
        """Remove the agent users whose credentials expired and have NATS reload its
        users (their agents are cut off). Returns the users removed."""
        from burst import _natsconf  # (imports cryptography: only where users exist)

        if not (self.home / "nats" / "users.json").exists():
            return []  # a cluster on 127.0.0.1 only: no users
        try:
            expired = _natsconf.expired_users(self.home, time.time() if now is None else now)
            gone = _natsconf.remove_users(self.home, expired) if expired else []
            if gone:
                told = _natsconf.reload_nats(self.home)
                self.log(f"agent credentials expired: removed NATS user {', '.join(gone)}; "
                         f"{told} NATS node(s) reloaded")
            return gone
        except (OSError, ValueError) as e:
            self.log(f"cannot check agent credentials for expiry: {e}")
            return []

    def check(self) -> None:
        """One look at every part: note the ones that exited, restart those that are due."""
        assert self.state is not None
        for part in self.state.parts:
            if self.stopping or part.name not in self.commands:
                continue
            due = self.due.get(part.name)
            if due is None:
                if not is_alive(part.pid, part.started):
                    self._exited(part)
            elif time.monotonic() >= due:
                self._restart(part)

    def _exited(self, part: Part) -> None:
        child = self.children.get(part.name)
        code = child.poll() if child is not None and child.pid == part.pid else None
        part.last_exit = describe_exit(code)
        # What the part started and left behind (an agent's containers) goes with it.
        leftovers = members(part, all_procs())
        if leftovers:
            signal_all(leftovers, signal.SIGKILL)
            wait_gone(leftovers, LEFTOVER_TIMEOUT)
        now = time.monotonic()
        ran = now - self.since.get(part.name, now)
        quick = 0 if ran >= self.settings.backoff_max else self.quick_exits.get(part.name, 0)
        delay = self.settings.delay(quick)
        self.quick_exits[part.name] = quick + 1
        self.due[part.name] = now + delay
        # Its ports stay its own (the profile and the other parts name them): one that
        # another process took meanwhile is said plainly, and the restarts go on until
        # it is free again.
        from burst._cluster import port_is_free  # (that module imports this one)

        taken = [port for port in part.ports.values() if not port_is_free(port)]
        if taken:
            part.last_exit += (f" (port {', '.join(map(str, taken))} taken by another "
                               f"process)")
        self.log(f"{part.name} (pid {part.pid}) {part.last_exit} after {ran:.1f} s; "
                 f"restarting it in {delay:g} s")
        if taken:
            self.log(f"{part.name} keeps its port {', '.join(map(str, taken))}, which another "
                     f"process holds now: it cannot listen until that one is free (or run "
                     f"`burst down` and `burst up` for new ports)")
        self._record()

    def _restart(self, part: Part) -> None:
        command = self.commands[part.name]
        now = time.monotonic()
        try:
            with open(part.log, "ab") as out:
                out.write(f"\n--- restarted by burst's supervisor at "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%S')} "
                          f"(restart {part.restarts + 1}) ---\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    command.argv, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=command.env, cwd=self.home,
                    start_new_session=True,
                )
        except OSError as e:
            delay = self.settings.delay(self.quick_exits.get(part.name, 0))
            self.quick_exits[part.name] = self.quick_exits.get(part.name, 0) + 1
            self.due[part.name] = now + delay
            self.log(f"{part.name} could not be started ({e}); trying again in {delay:g} s")
            return
        info = proc_info(proc.pid)
        part.pid = part.pgid = proc.pid
        part.started = info.started if info else 0
        part.restarts += 1
        self.children[part.name] = proc
        self.since[part.name] = now
        del self.due[part.name]
        self._record()
        self.log(f"{part.name} restarted (pid {proc.pid}, restart {part.restarts})")

    def _record(self) -> None:
        assert self.state is not None
        current = read_state(self.home)
        if current is None or current.supervisor is None or \
                current.supervisor.pid != os.getpid():
            # The cluster was taken down (or over) without asking this process to stop.
            self.log(f"{state_path(self.home)} no longer names this supervisor: stopping")
            self.stopping = True
            return
        write_state(self.home, self.state)


# ---- used by the CLI ---------------------------------------------------------------------------
def start(home: Path, settings: SupervisorSettings, commands: dict[str, Command]) -> Part:
    """Start the supervisor of the cluster recorded in ``home``; returns it once it has
    recorded itself there. Raises :class:`UnavailableError` (with its log) if it does not."""
    log = home / "logs" / f"{SUPERVISOR}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "burst._supervisor", str(home)],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=home,
            start_new_session=True,
        )
    spec = {
        "settings": dataclasses.asdict(settings),
        "commands": {name: dataclasses.asdict(c) for name, c in commands.items()},
    }
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
    except OSError:
        pass  # it exited already: said below
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            state = read_state(home)
            if state is not None and state.supervisor is not None and \
                    state.supervisor.pid == proc.pid:
                return state.supervisor
            code = proc.poll()
            if code is not None:
                raise _start_failed(log, f"exited with status {code} while starting")
            if time.monotonic() > deadline:
                raise _start_failed(log, f"did not start within {START_TIMEOUT:g} s")
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def _start_failed(log: Path, why: str) -> UnavailableError:
    err = UnavailableError(f"the supervisor {why}")
    tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
    err.add_note(f"last lines of {log}:\n" + ("\n".join(tail) or "(log is empty)"))
    return err


def running(state: ClusterState) -> bool:
    sup = state.supervisor
    return sup is not None and is_alive(sup.pid, sup.started)


def stop(home: Path, state: ClusterState) -> ClusterState:
    """Stop the supervisor of ``state``, so that nothing is restarted any more, and return
    the cluster as it left it: every part with its latest pid (plus, should the supervisor
    have needed SIGKILL in the middle of a restart, the process it had not recorded yet).
    """
    sup = state.supervisor
    if sup is None or not is_alive(sup.pid, sup.started):
        return state

    def children() -> list[ProcInfo]:  # the parts it restarted, and one it may be starting
        return [p for p in all_procs()
                if p.ppid == sup.pid and not p.zombie and p.started >= sup.started]

    me = [ProcInfo(pid=sup.pid, ppid=0, pgid=sup.pgid, started=sup.started, zombie=False)]
    seen = {p.pid: p for p in children()}
    with contextlib.suppress(ProcessLookupError):
        os.kill(sup.pid, signal.SIGTERM)
    if wait_gone(me, STOP_TIMEOUT):
        seen.update((p.pid, p) for p in children())
        with contextlib.suppress(ProcessLookupError):
            os.kill(sup.pid, signal.SIGKILL)
        wait_gone(me, STOP_TIMEOUT)
    state = read_state(home) or state
    recorded = {p.pid for p in state.parts}
    for child in seen.values():
        if child.pid not in recorded and is_alive(child.pid, child.started):
            state.parts.append(Part(name=f"unrecorded-{child.pid}", pid=child.pid,
                                    pgid=child.pgid, started=child.started, log=""))
    return state


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m burst._supervisor HOME (the command and environment of "
              "each part on stdin, as `burst up` writes them)", file=sys.stderr)
        return 2
    spec = json.loads(sys.stdin.read())
    supervisor = Supervisor(
        Path(argv[1]),
        SupervisorSettings(**spec["settings"]),
        {name: Command(**c) for name, c in spec["commands"].items()},
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
