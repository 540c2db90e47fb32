"""``burst app``: deployed apps and ephemeral runs, their functions' state, stopping them,
their versions and rollbacks."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

from burst import wire
from burst.client import Client
from burst.exception import InvalidError

app_cmd = typer.Typer(help="Deployed apps.", no_args_is_help=True)
console = Console(highlight=False)


@app_cmd.command("list")
def list_apps(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The workspace's apps and their functions."""
    data = Client.from_profile().get_json("/v1/apps")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("app", "id", "functions", "deployment", "deployed", title="Apps",
                  title_justify="left")
    for a in data["apps"]:
        age = time.time() - a["created_at"]
        kind = (" (ephemeral, detached)" if a.get("detached") else " (ephemeral)"
                ) if a["ephemeral"] else ""
        table.add_row(a.get("name", a["app"]) + kind, a["app"] if a["ephemeral"] else "",
                      ", ".join(a["functions"]), a["deployment_id"], f"{age:.0f} s ago")
    console.print(table)


@app_cmd.command("status")
def status(name: str = typer.Argument(..., help="The app's name (its deployment, else its "
                                      "latest run) or a run's id."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Per function: containers by state, queued inputs, and why it waits, if it does."""
    data = Client.from_profile().get_json(f"/v1/apps/{name}/status")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    title = f"App {data.get('name', name)}"
    if data.get("ephemeral"):
        title += f" (ephemeral run {data['app']})"
    web = any(f.get("web_urls") for f in data["functions"])
    table = Table("function", "containers", "queued", *(["web requests"] if web else []),
                  "waiting", title=title, title_justify="left")
    for f in data["functions"]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(f["containers"].items())) or "none"
        waiting = f["waiting"]["reason"] if f["waiting"] else ""
        requests = [str(f.get("web_requests", 0)) if f.get("web_urls") else ""] if web else []
        table.add_row(f["function"], states, str(f["queued"]), *requests, waiting)
    console.print(table)
    for f in data["functions"]:
        for endpoint, url in (f.get("web_urls") or {}).items():
            console.print(f"web endpoint {endpoint} ({f['function']}): {url}", markup=False,
                          highlight=False, soft_wrap=True)


@app_cmd.command("stop")
def stop(name: str = typer.Argument(..., help="The app's name, or an ephemeral run's id.")
         ) -> None:
    """Stop an app: no new calls, its containers and schedules stop. Stopping a run (by its
    id, as `burst app list` shows it) also cancels its queued and running calls."""
    Client.from_profile().remove_app(name)
    console.print(f"[green]Stopped[/green] app [bold]{name}[/bold]")


@app_cmd.command("history")
def history(name: str = typer.Argument(..., help="The deployed app's name."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The app's deployed versions, newest first: when, the source's hash, and which token
    deployed it (the newest BURST_APP_HISTORY are kept)."""
    data = Client.from_profile().get_json(f"/v1/apps/{name}/history")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("version", "deployed", "source hash", "by token", "note",
                  title=f"App {name}", title_justify="left")
    for v in data["versions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"]))
        note = ", ".join(x for x in (
            "running" if v["current"] else "",
            f"rollback to {v['rollback_of']}" if v["rollback_of"] else "",
            v["strategy"] if v["strategy"] != "rolling" else "") if x)
        table.add_row(str(v["version"]), when, v["bundle_hash"][:12], v["deployed_by"], note)
    console.print(table)


@app_cmd.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="The deployed app's name."),
    version: int = typer.Argument(None, help="The version to deploy again (default: the "
                                  "one before the running one)."),
    strategy: str = typer.Option("rolling", "--strategy", help="rolling or recreate."),
) -> None:
    """Deploy a kept version of the app again (as a new version)."""
    try:
        wire.check_strategy(strategy)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    out = Client.from_profile().post_json(f"/v1/apps/{name}/rollback",
                                          {"version": version, "strategy": strategy})
    console.print(f"[green]Rolled back[/green] app [bold]{name}[/bold] to version "
                  f"{out['rollback_of']} (now version {out['version']}, "
                  f"{out['deployment_id']})")


def register(app: typer.Typer) -> None:
    app.add_typer(app_cmd, name="app")
