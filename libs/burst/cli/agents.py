"""``burst agent``: the machines of the cluster, and spot preemption."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from burst import _natsconf
from burst._parts import home_lock, is_alive, read_state
from burst.client import Client
from burst.exception import InvalidError, NotFoundError

agent_app = typer.Typer(help="Agents: the machines that run containers.", no_args_is_help=True)


def _gpus(a: dict[str, Any]) -> str:
    gpus = a.get("gpus") or []
    if not gpus:
        return "-"
    counts: dict[str, list[int]] = {}
    for g in gpus:
        counts.setdefault(str(g.get("type")), [0, 0])
        counts[str(g.get("type"))][0] += 1
        counts[str(g.get("type"))][1] += 1 if g.get("free") else 0
    text = ", ".join(f"{n}×{t} ({free} free)" for t, (n, free) in counts.items())
    return text + (" declared" if a.get("gpus_declared") else " real")


def _containers(a: dict[str, Any]) -> str:
    by_state: dict[str, int] = {}
    for c in a.get("containers") or []:
        by_state[c["state"]] = by_state.get(c["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "0"


@agent_app.command("list")
def list_agents(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every agent: state, spot or on-demand, CPUs, memory, GPUs (real or declared), containers."""
    data = Client.from_profile().get_json("/v1/agents")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("agent", "machine", "state", "capacity", "cpu", "memory", "gpus", "containers",
                  "heartbeat", title="Agents", title_justify="left")
    for a in data["agents"]:
        age = a.get("heartbeat_age")
        table.add_row(
            a["agent_id"], a.get("hostname") or "-", a["state"], a["capacity"],
            f"{a['cpu_claimed']:g}/{a['cpu']:g}",
            f"{a['memory_mb_claimed']}/{a['memory_mb']} MiB",
            _gpus(a), _containers(a), f"{age:.1f} s ago" if age is not None else "never",
        )
    Console().print(table)


@agent_app.command("preempt")
def preempt(agent_id: str = typer.Argument(..., help="The agent to preempt.")) -> None:
    """Stand in for a cloud's spot reclaim notice: drain the agent, stop its containers
    (in-flight inputs are handed back at once) and let the scheduler replace them."""
    Client.from_profile().post_json(f"/v1/agents/{agent_id}/preempt", {})
    print(f"preemption notice sent to agent {agent_id}")


@agent_app.command("drain")
def drain(
    agent_id: str = typer.Argument(..., help="The agent to take out."),
    timeout: str = typer.Option("", "--timeout", help="How long running inputs may take "
                                "to finish there (s, m, h or d; default: the agent's "
                                "BURST_DRAIN_TIMEOUT, 300 s)."),
) -> None:
    """Take a machine out: nothing more is placed on it, the inputs running there finish
    (idle containers stop at once), then the agent deletes its records and exits. What
    still runs after the timeout is interrupted and runs again elsewhere."""
    body: dict[str, Any] = {}
    if timeout:
        body["timeout"] = parse_duration(timeout, "--timeout")
    Client.from_profile().post_json(f"/v1/agents/{agent_id}/drain", body)
    print(f"agent {agent_id} is draining: running inputs finish there"
          f"{f' (within {timeout})' if timeout else ''}, then it leaves")


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")


def parse_duration(text: str, option: str = "--expires") -> float:
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise InvalidError(f"invalid {option} {text!r}: use a number with s, m, h or d, "
                           "e.g. 30m, 24h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _home(home: Path | None) -> Path:
    from burst.config import burst_home
    return (home.expanduser() if home else burst_home()).absolute()


@agent_app.command("token")
def token(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the join bundle.")]
    = Path("burst-join.json"),
    expires: Annotated[str, typer.Option(help="How long the bundle may be used to join "
                                         "(s, m, h or d).")] = "24h",
    home: Annotated[Path | None, typer.Option("--home", help="The cluster's home "
                                              "(default: $BURST_HOME or ~/.burst).")] = None,
    name: Annotated[str, typer.Option("--name", help="The agent this bundle is for: it "
                                      "joins only under this name, and `burst agent "
                                      "revoke NAME` finds its user by it.")] = "",
    credential_expires: Annotated[str, typer.Option(
        "--credential-expires", help="When the agent's credentials stop working, joined "
        "or not (s, m, h or d; default: never): the agent is cut off then.")] = "",
) -> None:
    """Write a join bundle for another machine (the cluster's CA certificate, credentials
    of a new agent user, the NATS URLs, the cluster id): `burst agent join BUNDLE` there.
    Run it on the control machine of a cluster started with `burst up --listen ADDR`."""
    from burst_core import names

    ttl = parse_duration(expires)
    credential_ttl = (parse_duration(credential_expires, "--credential-expires")
                      if credential_expires else 0.0)
    if name:
        try:
            names.check_ident("agent", name)
        except ValueError as e:
            raise InvalidError(f"invalid --name {name!r}: {e}") from None
    home = _home(home)
    with home_lock(home):
        state = read_state(home)
        if state is None:
            raise NotFoundError(f"no Burst cluster is running from {home}: start one with "
                                "`burst up --listen ADDR`")
        urls = _natsconf.read_advertised(home)
        if not urls:
            raise InvalidError(f"the cluster from {home} listens on 127.0.0.1 only: restart "
                               "it with `burst up --listen ADDR` so other machines reach it")
        bundle = _natsconf.make_bundle(home, urls, ttl, name, credential_ttl)
        _natsconf.reload_nats(home)  # nats-server reloads its users
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(bundle, f, indent=1)
    print(f"wrote {out} (cluster {bundle['cluster_id']}, agent user {bundle['user']}"
          f"{f' for agent {name}' if name else ''}, usable for {expires}"
          f"{f', credentials expire in {credential_expires}' if credential_expires else ''})"
          f": copy it to the machine and run `burst agent join {out}`")


@agent_app.command("revoke")
def revoke(
    agent_id: Annotated[str, typer.Argument(help="The joined agent to cut off.")],
    home: Annotated[Path | None, typer.Option("--home", help="The cluster's home "
                                              "(default: $BURST_HOME or ~/.burst).")] = None,
) -> None:
    """Cut a joined agent off (on the control machine, operator token): its NATS user is
    removed and nats-server reloads, so it exits; what it ran runs again elsewhere, and
    its bundle can never join again. The user is the one its bundle was made for
    (`burst agent token --name`), and any user nats-server saw connect as that agent."""
    from burst_core import names

    try:
        names.check_ident("agent", agent_id)
    except ValueError as e:
        raise InvalidError(f"invalid agent name {agent_id!r}: {e}") from None
    home = _home(home)
    state = read_state(home)
    if state is None:
        raise NotFoundError(f"no Burst cluster is running from {home}: run `burst agent "
                            "revoke` on the control machine (or pass its --home)")
    if not (home / "nats" / "users.json").exists():
        raise InvalidError(f"the cluster from {home} listens on 127.0.0.1 only: no agent "
                           "joined it with a bundle, so there is none to revoke (take an "
                           "agent out with `burst agent drain`)")
    users = set(_natsconf.users_of_agent(home, agent_id))
    for part in state.parts:
        if part.name == "nats" or part.name.startswith("nats-"):
            monitor = part.ports.get("monitor", 0)
            if monitor and is_alive(part.pid, part.started):
                try:
                    users |= set(_natsconf.connected_users(monitor, f"agent-{agent_id}"))
                except (OSError, ValueError) as e:  # the bound users still go
                    print(f"warning: could not ask {part.name} which users are connected "
                          f"as agent {agent_id} ({e})", file=sys.stderr)
    users.discard(_natsconf.LOCAL_AGENT_USER)
    users.discard(_natsconf.SERVICES_USER)
    client = Client.from_profile()
    if not users:
        listed = {a["agent_id"] for a in client.get_json("/v1/agents")["agents"]}
        if agent_id not in listed:
            raise NotFoundError(f"agent {agent_id!r} is not registered, and no bundle was "
                                f"made for it (`burst agent token --name {agent_id}`)")
        raise NotFoundError(
            f"agent {agent_id!r} has no NATS user of its own to revoke: neither a bundle "
            f"made for it (`burst agent token --name {agent_id}`) nor a connection of its "
            "own (the control machine's own agent is taken out with `burst agent drain`)")
    registered = True
    try:  # nothing more is placed there (the record says revoked)
        client.post_json(f"/v1/agents/{agent_id}/revoke", {})
    except NotFoundError:
        registered = False
    gone = _natsconf.remove_users(home, sorted(users))
    _natsconf.reload_nats(home)
    print(f"revoked agent {agent_id} (NATS user {', '.join(gone) or 'already removed'})"
          f"{'' if registered else '; it was not registered'}: it is cut off and its "
          "bundle cannot join again")


@agent_app.command("join")
def join(
    bundle: Annotated[Path, typer.Argument(help="The join bundle `burst agent token` wrote.")],
    name: Annotated[str, typer.Option(help="This agent's name (default: the bundle's "
                                      "agent, else the machine's hostname).")] = "",
    gpus: Annotated[str, typer.Option(help="Declared GPUs for machines without NVML, "
                                      "e.g. H100:8.")] = "",
    spot: Annotated[bool, typer.Option("--spot", help="Offer this machine as spot.")] = False,
    runtime: Annotated[str, typer.Option(help="process or docker.")] = "process",
    home: Annotated[Path | None, typer.Option("--home", help="The agent's state directory "
                                              "(default: $BURST_HOME or ~/.burst).")] = None,
) -> None:
    """Join the cluster of BUNDLE from this machine: checks the bundle and the cluster,
    then runs only an agent here (in the foreground) that registers, heartbeats and runs
    containers."""
    from burst import _join
    from burst._cluster import check_gpus

    _join.run_agent(bundle, name, check_gpus(gpus), spot, runtime, _home(home),
                    default_name=socket.gethostname().split(".")[0].lower())


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
