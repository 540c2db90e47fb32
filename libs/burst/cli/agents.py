"""``burst agent``: the machines of the cluster, and spot preemption."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

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
    table = Table("agent", "state", "capacity", "cpu", "memory", "gpus", "containers",
                  "heartbeat", title="Agents", title_justify="left")
    for a in data["agents"]:
        age = a.get("heartbeat_age")
        table.add_row(
            a["agent_id"], a["state"], a["capacity"],
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


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
