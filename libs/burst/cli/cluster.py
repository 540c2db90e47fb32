"""``burst up``, ``burst down``, ``burst status``: a whole local cluster on this machine.

The commands and their rendering; starting, probing and recording the cluster's parts is
:mod:`burst._cluster` (with :mod:`burst._parts` and :mod:`burst._supervisor`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from burst import _natsconf, _supervisor
from burst._cluster import (
    DEFAULT_PORTS,
    HOST,
    check_gpus,
    check_listen_nodes,
    cluster_ports,
    fetch_status,
    pick_ports,
    start_cluster,
    unhealthy_services,
)
from burst._parts import (
    STATE_FILE,
    ClusterState,
    Part,
    all_procs,
    home_lock,
    is_alive,
    members,
    read_state,
    state_path,
    stop_parts,
)
from burst.config import burst_home, profile_path, read_profile
from burst.exception import (
    ConflictError,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Burst's state directory (profile, logs, NATS store). "
        "Default: $BURST_HOME or ~/.burst.",
        show_default=False,
    ),
]


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
    nats_cluster: Annotated[
        int,
        typer.Option(
            "--nats-cluster",
            help="NATS nodes: 1, or 3 for a cluster that survives losing any one node "
            "(streams and buckets kept on all three, BURST_REPLICAS=3; two gateways and "
            "two schedulers).",
        ),
    ] = 1,
    listen: Annotated[
        str,
        typer.Option(
            help="An address of this machine to serve other machines on: NATS (TLS, a user "
            "per role) for agents that join with `burst agent join`, the gateway's API and "
            "web ports for clients. Redis and internal ports stay on 127.0.0.1.",
        ),
    ] = "",
) -> None:
    """Start a local cluster in the background: NATS, Redis, gateway, scheduler, billing, agent.

    Writes the admin profile to $BURST_HOME/profile.json, so `burst run` works right after.
    """
    gpus = check_gpus(gpus)
    cluster_ports(DEFAULT_PORTS, nats_cluster)  # a bad count is an error before anything else
    check_listen_nodes(listen, nats_cluster)
    if listen:
        _natsconf.check_listen(listen)
    if runtime not in ("process", "docker"):
        raise InvalidError(f"invalid --runtime {runtime!r}: use process or docker")
    supervise = _supervisor.SupervisorSettings.from_env(os.environ)
    home = resolve_home(home)
    err = Console(stderr=True)
    with home_lock(home):
        state = read_state(home)
        if state is not None:
            if running_parts(state) or _supervisor.running(state):
                raise ConflictError(
                    f"a Burst cluster from {home} is already running (gateway {state.url}): "
                    "stop it with `burst down`, or use --home for another one"
                )
            err.print(
                f"removing stale {state_path(home)} (its processes have exited)", markup=False
            )
            state = _supervisor.stop(home, state)
            stop_parts(state.parts)  # leftovers of its parts' process groups, if any
            state_path(home).unlink(missing_ok=True)
        preferred = cluster_ports({**DEFAULT_PORTS, "gateway": port}, nats_cluster)
        ports = pick_ports(preferred)
        for role, chosen in ports.items():
            if chosen != preferred[role]:
                err.print(f"port {preferred[role]} ({role}) is taken: using {chosen}", markup=False)
        with Progress(err) as progress:
            state, profile = start_cluster(
                home, ports, gpus, spot, timeout, progress, runtime, supervise, listen
            )
    parts = [*state.parts, *([state.supervisor] if state.supervisor else [])]
    out = Console(highlight=False)
    out.print(f"[green]Burst cluster is up[/] (home {home})")
    out.print(f"  gateway  {profile.url}", markup=False)
    gateway = next((p for p in state.parts if p.name == "gateway"), None)
    if gateway is not None and gateway.ports.get("web"):
        host = profile.url.split("://", 1)[-1].rsplit(":", 1)[0]
        out.print(f"  web      http://{host}:{gateway.ports['web']}  (web endpoints)",
                  markup=False)
    second = next((p for p in state.parts if p.name == "gateway-2"), None)
    if second is not None and second.ports.get("http"):
        out.print(f"  gateway  http://{HOST}:{second.ports['http']}  (the second one)",
                  markup=False)
    nodes = [p for p in state.parts if p.name.startswith("nats")]
    if len(nodes) > 1:
        out.print(f"  nats     {', '.join(str(p.ports.get('client')) for p in nodes)}  "
                  f"({len(nodes)} nodes, streams and buckets on each)", markup=False)
    out.print(f"  profile  {profile_path(home)}", markup=False)
    for url in _natsconf.read_advertised(home):
        out.print(f"  nats     {url}  (agents join with `burst agent token`, then "
                  "`burst agent join BUNDLE`)", markup=False)
    out.print(
        f"  logs     {home / 'logs'}/<{','.join(p.name for p in parts)}>.log", markup=False
    )
    if state.supervisor is None:
        out.print("  parts that exit stay down (BURST_SUPERVISE=0)", markup=False)
    out.print("Run `burst status` to inspect it and `burst down` to stop it.", markup=False)


def down(home: HomeOption = None) -> None:
    """Stop the local cluster `burst up` started: the agent and its containers first."""
    home = resolve_home(home)
    with home_lock(home):
        state = read_state(home)
        if state is None:
            raise NotFoundError(f"no Burst cluster is running from {home}: nothing to stop")
        # First the supervisor, so that nothing stopped below is started again.
        state = _supervisor.stop(home, state)
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
    supervising = _supervisor.running(state)
    restarting = " (the supervisor restarts it)" if supervising else ""
    problems = [
        f"{p.name}: process {p.pid} is not running{restarting}"
        for p in state.parts
        if p.name not in alive
    ]
    if state.supervisor is not None and not supervising:
        problems.append(
            f"supervisor: process {state.supervisor.pid} is not running, so parts that exit "
            "stay down"
        )
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
        supervisor = (
            {**dataclasses.asdict(state.supervisor), "running": supervising}
            if state.supervisor is not None
            else None
        )
        print(
            json.dumps(
                {
                    "home": str(home),
                    "url": state.url,
                    "parts": parts,
                    "supervisor": supervisor,
                    "status": info,
                    "problems": problems,
                },
                indent=2,
            )
        )
    else:
        render_status(state, alive, info, supervising)
    if problems:
        raise UnavailableError("the cluster is not healthy: " + "; ".join(problems))


def _age(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "?"


def render_status(
    state: ClusterState, alive: set[str], info: dict[str, Any] | None, supervising: bool = False
) -> None:
    out = Console(highlight=False)
    out.print(f"Burst cluster at {state.url} (home {state.home})", markup=False)
    parts = Table(
        "part", "pid", "state", "restarts", "ports", "log", title="Processes", title_justify="left"
    )
    for p in state.parts:
        if p.name in alive:
            running = "[green]running[/]"
        else:
            running = "[yellow]restarting[/]" if supervising else "[red]exited[/]"
        ports = ", ".join(f"{k} {v}" for k, v in p.ports.items())
        restarts = f"{p.restarts} ({p.last_exit})" if p.restarts else "0"
        parts.add_row(p.name, str(p.pid), running, restarts, ports, p.log)
    if state.supervisor is not None:
        sup = state.supervisor
        running = "[green]running[/]" if supervising else "[red]exited[/]"
        parts.add_row(sup.name, str(sup.pid), running, "", "", sup.log)
    out.print(parts)
    if state.supervisor is None:
        out.print("Supervision is off (BURST_SUPERVISE=0): parts that exit stay down.")
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
