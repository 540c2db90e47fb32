"""``burst schedule``: the schedules of deployed apps."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

schedule_app = typer.Typer(help="Schedules of deployed apps: list, pause, resume.",
                           no_args_is_help=True)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    d = t - time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{stamp} (in {d:.0f} s)" if 0 < d < 3600 else stamp


def _row(s: dict[str, Any]) -> list[str]:
    return [s["app"], s["function"], s["schedule"], "paused" if s["paused"] else "active",
            _when(s.get("next_tick_at")), str(s.get("fired", 0)), str(s.get("missed", 0)),
            str(s.get("skipped", 0))]


@schedule_app.command("list")
def list_schedules(
    app: str | None = typer.Argument(None, help="Only this app's schedules."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every schedule of the workspace's deployed apps: next tick, ticks fired, missed and
    skipped (a hard budget was spent)."""
    data = Client.from_profile().get_json("/v1/schedules", {"app": app})
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("app", "function", "schedule", "state", "next tick", "fired", "missed",
                  "skipped", title="Schedules", title_justify="left")
    for s in data["schedules"]:
        table.add_row(*_row(s))
    console = Console()
    console.print(table)
    for s in data["schedules"]:
        if s.get("skipped"):
            console.print(f"{s['app']}.{s['function']}: {s['skipped']} tick(s) skipped, "
                          f"the last at {_when(s.get('last_skipped_tick_at'))}: "
                          f"{s.get('last_skipped_reason') or 'unknown reason'}")


@schedule_app.command("pause")
def pause(app: str = typer.Argument(..., help="The deployed app."),
          function: str = typer.Argument(..., help="Its scheduled function.")) -> None:
    """Stop a schedule's ticks (those due while paused are missed; see resume --backfill)."""
    Client.from_profile().post_json(f"/v1/apps/{app}/functions/{function}/schedule/pause", {})
    print(f"paused the schedule of {app}.{function}")


@schedule_app.command("resume")
def resume(
    app: str = typer.Argument(..., help="The deployed app."),
    function: str = typer.Argument(..., help="Its scheduled function."),
    backfill: bool = typer.Option(False, "--backfill", help="Also fire, once each, the ticks "
                                  "missed while paused or while the cluster was down."),
) -> None:
    """Restart a paused schedule from its next tick."""
    client = Client.from_profile()
    _, body = client.request(
        "POST", f"/v1/apps/{app}/functions/{function}/schedule/resume", b"{}",
        "application/json", params={"backfill": "true" if backfill else None})
    s = json.loads(body)
    extra = f"; backfilling {s['missed']} missed tick(s)" if backfill else ""
    print(f"resumed the schedule of {app}.{function}{extra}")


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
