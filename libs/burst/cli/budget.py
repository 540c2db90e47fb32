"""``burst budget``: spending limits per workspace, app or function."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

budget_app = typer.Typer(help="Spending limits (soft alerts, hard caps).", no_args_is_help=True)
console = Console(highlight=False)


def usd(value: float) -> str:
    """``$1.50``; a nonzero amount under a cent keeps its digits (``$0.005``, not ``$0.00``)."""
    if value == 0 or abs(value) >= 0.01:
        return f"${value:,.2f}"
    return "$" + f"{value:.8f}".rstrip("0")


def alerts_text(thresholds: list[int]) -> str:
    """``alerts at 50,80%`` or ``no alerts``."""
    if not thresholds:
        return "no alerts"
    return "alerts at " + ",".join(str(t) for t in thresholds) + "%"


def _path(scope: str) -> str:
    return f"/v1/budgets/{scope}"


@budget_app.command("set")
def set_budget(
    scope: str = typer.Argument(..., help="'workspace', an app, or <app>.<function>."),
    limit: float = typer.Option(..., "--limit", help="USD per period, e.g. 25.00."),
    hard: bool = typer.Option(False, "--hard", help="Refuse calls and stop containers once "
                              "spent (otherwise alerts only)."),
    alert_at: str = typer.Option("", "--alert-at", help="Percent thresholds that alert, "
                                 "e.g. 50,80,100."),
    period: str = typer.Option("month", "--period", help="'month', '<N>d' (e.g. 7d) or "
                               "'YYYY-MM-DD..YYYY-MM-DD'."),
) -> None:
    """Set (or replace) the budget of SCOPE."""
    try:
        thresholds = [int(t) for t in alert_at.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"--alert-at {alert_at!r}: use percents like 50,80,100") \
            from None
    body = {"limit": limit, "hard": hard, "alert_at": thresholds, "period": period}
    c = Client.from_profile()
    _, data = c.request("PUT", _path(scope), json.dumps(body).encode(), "application/json")
    out = json.loads(data)
    kind = "hard cap" if out["hard"] else "soft budget"
    console.print(f"{kind} on {out['scope']}: {usd(out['limit'])} per {out['period']} "
                  f"({alerts_text(out['alert_at'])})")


@budget_app.command("list")
def list_budgets(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Budgets of your workspace, with this period's spend."""
    data = Client.from_profile().get_json("/v1/budgets")
    if json_out:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"Budgets of workspace {data['workspace']}", title_justify="left")
    for col in ("scope", "limit", "kind", "period", "spend", "alerts", "state"):
        table.add_column(col, justify="right" if col in ("limit", "spend") else "left")
    for b in data["budgets"]:
        st = b["state"] or {}
        state = "EXCEEDED" if st.get("exceeded") else ("ok" if st else "not evaluated yet")
        if st.get("overshoot"):
            state += f" (overshoot ${st['overshoot']:.4f})"
        table.add_row(b["scope"], usd(b["limit"]), "hard" if b["hard"] else "soft",
                      st.get("period", b["period"]), f"${st.get('spend', 0.0):.4f}",
                      ",".join(str(t) for t in b["alert_at"]) or "no alerts", state)
    console.print(table)


@budget_app.command("clear")
def clear(scope: str = typer.Argument(..., help="The budget's scope.")) -> None:
    """Remove the budget of SCOPE (a scope it stopped reopens)."""
    Client.from_profile().request("DELETE", _path(scope))
    console.print(f"budget on {scope} cleared")


def register(app: typer.Typer) -> None:
    app.add_typer(budget_app, name="budget")
