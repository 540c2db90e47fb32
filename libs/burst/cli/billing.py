"""``burst billing``: usage and cost reports."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

billing_app = typer.Typer(help="Usage and cost.", no_args_is_help=True)


class By(str, Enum):
    app = "app"
    function = "function"


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@billing_app.command("report")
def report(
    by: By = typer.Option(By.app, "--by", help="Group rows by app or by function."),
    fmt: Format = typer.Option(Format.table, "--format", help="Output format."),
) -> None:
    """Container-seconds and cost of your workspace, per app or function."""
    data = Client.from_profile().get_json("/v1/billing/report", {"by": by.value})
    rows = data["rows"]
    if fmt is Format.json:
        print(json.dumps(data, indent=2))
        return
    cols = ["app"] + (["function"] if by is By.function else []) + ["seconds", "cost"]
    if fmt is Format.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow([r["app"]] + ([r["function"]] if by is By.function else [])
                       + [f"{r['seconds']:.3f}", f"{r['cost']:.6f}"])
        return
    table = Table(title=f"Usage of workspace {data['workspace']}", title_justify="left")
    for c in cols:
        table.add_column(c, justify="right" if c in ("seconds", "cost") else "left")
    for r in rows:
        table.add_row(r["app"], *([r["function"]] if by is By.function else []),
                      f"{r['seconds']:.1f}", f"${r['cost']:.6f}")
    total = data["total"]
    table.add_section()
    table.add_row("total", *([""] if by is By.function else []), f"{total['seconds']:.1f}",
                  f"${total['cost']:.6f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(billing_app, name="billing")
