"""``burst webhook``: endpoints that receive signed alerts, and their delivery log."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client

webhook_app = typer.Typer(help="Signed webhook alerts.", no_args_is_help=True)
console = Console(highlight=False)


@webhook_app.command("add")
def add(
    url: str = typer.Argument(..., help="http(s) URL that receives the POSTs."),
    events: str = typer.Option(..., "--events", help="Comma-separated, e.g. "
                               "budget.threshold_crossed,budget.exceeded."),
    description: str = typer.Option("", "--description", help="A label."),
) -> None:
    """Add an endpoint. Prints its id and signing secret (shown only once)."""
    body = {"url": url, "events": [e.strip() for e in events.split(",") if e.strip()],
            "description": description}
    out = Client.from_profile().post_json("/v1/webhooks", body)
    console.print(f"webhook {out['id']} -> {out['url']} ({', '.join(out['events'])})")
    console.print(f"secret: {out['secret']}")
    console.print("Verify deliveries with burst.webhooks.verify(body, headers, secret).",
                  style="dim")


@webhook_app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Endpoints of your workspace."""
    data = Client.from_profile().get_json("/v1/webhooks")
    if json_out:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"Webhooks of workspace {data['workspace']}", title_justify="left")
    for col in ("id", "url", "events"):
        table.add_column(col)
    for w in data["webhooks"]:
        table.add_row(w["id"], w["url"], ",".join(w["events"]))
    console.print(table)


@webhook_app.command("remove")
def remove(endpoint_id: str = typer.Argument(..., help="The endpoint's id (ep_...).")) -> None:
    """Remove an endpoint; its pending deliveries are dropped."""
    Client.from_profile().request("DELETE", f"/v1/webhooks/{endpoint_id}")
    console.print(f"webhook {endpoint_id} removed")


@webhook_app.command("test")
def test(endpoint_id: str = typer.Argument(..., help="The endpoint's id (ep_...).")) -> None:
    """Send a signed ``webhook.test`` event to an endpoint (see `burst webhook deliveries`)."""
    out = Client.from_profile().post_json(f"/v1/webhooks/{endpoint_id}/test", {})
    console.print(f"queued delivery {out['delivery_id']} to {endpoint_id}")


@webhook_app.command("deliveries")
def deliveries(
    endpoint_id: str = typer.Option(None, "--endpoint", help="Only this endpoint's."),
    limit: int = typer.Option(50, "--limit", help="Most recent N."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The delivery log, newest first: status, attempts, last answer."""
    data = Client.from_profile().get_json("/v1/webhooks/deliveries",
                                          {"endpoint": endpoint_id, "limit": limit})
    if json_out:
        print(json.dumps(data, indent=2))
        return
    table = Table(title="Webhook deliveries", title_justify="left")
    for col in ("id", "endpoint", "event", "status", "attempts", "last"):
        table.add_column(col)
    for d in data["deliveries"]:
        last = str(d["last_status_code"] or "") + (f" {d['last_error']}" if d["last_error"] else "")
        table.add_row(d["id"], d["endpoint"], d["event"], d["status"], str(d["attempts"]),
                      last.strip())
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(webhook_app, name="webhook")
