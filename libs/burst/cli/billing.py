"""``burst billing``: usage and cost reports."""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

billing_app = typer.Typer(help="Usage and cost.", no_args_is_help=True)


class By(StrEnum):
    app = "app"
    function = "function"
    resource = "resource"
    day = "day"


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _columns(by: By) -> list[str]:
    if by is By.resource:
        return ["resource", "quantity", "unit", "cost"]
    keys = {By.app: ["app"], By.function: ["app", "function"], By.day: ["day"]}[by]
    return keys + ["seconds", "cost"]


def _cell(col: str, value: Any, fmt: Format) -> str:
    if col == "cost":
        return f"{value:.6f}" if fmt is Format.csv else f"${value:.6f}"
    if col in ("seconds", "quantity"):
        return f"{value:.3f}" if fmt is Format.csv else f"{value:.1f}"
    return str(value)


@billing_app.command("report")
def report(
    by: By = typer.Option(By.app, "--by", help="Group rows by app, function, resource or day."),
    since: str = typer.Option(None, "--since", help="Only usage from this UTC day (YYYY-MM-DD)."),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
) -> None:
    """Usage and cost of your workspace: per app, function, resource (CPU, memory, GPU
    type) or UTC day. Costs are USD at the cluster's price table."""
    data = Client.from_profile().get_json("/v1/billing/report",
                                          {"by": by.value, "since": since})
    rows = data["rows"]
    if fmt is Format.json:
        print(json.dumps(data, indent=2))
        return
    cols = _columns(by)
    if fmt is Format.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(c, r[c], fmt) for c in cols])
        return
    title = f"Usage of workspace {data['workspace']}" + (f" since {since}" if since else "")
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c, justify="right" if c in ("seconds", "cost", "quantity") else "left")
    for r in rows:
        cells = [_cell(c, r[c], fmt) for c in cols]
        if cols[0] == "app" and r.get("ephemeral_seconds"):  # usage of `burst run`s of it
            whole = r["ephemeral_seconds"] >= r["seconds"]
            cells[0] += " (ephemeral)" if whole else " (incl. ephemeral runs)"
        table.add_row(*cells)
    total = data["total"]
    table.add_section()
    table.add_row(*["total" if i == 0 else _cell(c, total[c], fmt) if c in total else ""
                    for i, c in enumerate(cols)])
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(billing_app, name="billing")
