"""``burst token`` and ``burst workspace``: API tokens (one workspace and scope each) and
the workspaces they belong to."""

from __future__ import annotations

import json
import math
import re
import time

import typer
from rich.console import Console
from rich.table import Table

from burst.client import Client
from burst.exception import InvalidError

token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
workspace_app = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
console = Console(highlight=False)

SCOPES = ("read", "invoke", "deploy", "admin", "operator")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (one number and a unit)."""
    m = _DURATION.fullmatch(text.strip())
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else math.nan
    if not m or not (0 < seconds <= 10 * 365 * 86400):
        raise InvalidError(f"invalid duration {text!r}: expected a number and one of "
                           "s, m, h, d, w (for example 30d or 12h), more than 0 and at "
                           "most ten years")
    return seconds


def _when(t: float | None) -> str:
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@token_app.command("create")
def create(
    workspace: str = typer.Option(..., "--workspace", "-w", help="Workspace of the new token."),
    scope: str = typer.Option("", "--scope", help="read, invoke, deploy, admin (the default) "
                              "or operator (the cluster: tokens for any workspace, agents)."),
    expires: str = typer.Option("", "--expires", help="Lifetime, e.g. 30d, 12h (default: "
                                "never expires)."),
    name: str = typer.Option("", "--name", help="A label for the token."),
    admin: bool = typer.Option(False, "--admin", help="Same as --scope operator."),
    proxy_auth: bool = typer.Option(False, "--proxy-auth", help="Make a proxy-auth token for "
                                    "web endpoints with requires_proxy_auth=True: a key and "
                                    "a secret, sent as the Burst-Key and Burst-Secret headers."),
) -> None:
    """Create a token for WORKSPACE. The token is printed once.

    An operator token makes tokens for any workspace; a workspace's admin token, for its
    own workspace (up to scope admin)."""
    if scope and scope not in SCOPES:
        raise InvalidError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    body: dict[str, object] = {"workspace": workspace, "name": name, "scope": scope,
                               "admin": admin, "proxy_auth": proxy_auth}
    if expires:
        body["expires_in"] = parse_duration(expires)
    out = Client.from_profile().post_json("/v1/tokens", body)
    if proxy_auth:
        console.print(f"Burst-Key: {out['token_id']}\nBurst-Secret: {out['token_secret']}",
                      markup=False)
        return
    console.print(out["token"], markup=False)


@token_app.command("list")
def list_tokens(
    workspace: str = typer.Option("", "--workspace", "-w", help="Only this workspace's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Tokens: id, workspace, scope, created, last used, expiry and status (never the
    secret). An operator sees every workspace's; others, their own workspace's."""
    data = Client.from_profile().get_json("/v1/tokens", {"workspace": workspace or None})
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title="Tokens", title_justify="left")
    table.add_column("id", no_wrap=True)  # what `burst token revoke` takes: never cut
    for column in ("workspace", "scope", "name", "created", "last used", "expires", "status"):
        table.add_column(column)
    for t in data["tokens"]:
        table.add_row(t["token_id"], t["workspace"],
                      t["scope"] or t["kind"].replace("_", "-"), t["name"],
                      _when(t["created_at"]), _when(t["last_used_at"]) or "never",
                      _when(t["expires_at"]) or "never", t["status"])
    console.print(table)


@token_app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="The token's id (tk-..., or a "
                                          "proxy-auth token's wk-...), as `burst token list` "
                                          "shows it.")) -> None:
    """Revoke a token: every gateway refuses it within seconds."""
    client = Client.from_profile()
    client.request("DELETE", f"/v1/tokens/{token_id}")
    console.print(f"[green]Revoked[/green] token [bold]{token_id}[/bold]")


@workspace_app.command("list")
def list_workspaces(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Workspaces (an operator sees all; other tokens, their own)."""
    data = Client.from_profile().get_json("/v1/workspaces")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("workspace", "created", title="Workspaces", title_justify="left")
    for w in data["workspaces"]:
        table.add_row(w["name"], _when(w["created_at"]))
    console.print(table)


@workspace_app.command("create")
def create_workspace(name: str = typer.Argument(..., help="The new workspace's name.")) -> None:
    """Create a workspace (operator token); then `burst token create --workspace NAME`."""
    Client.from_profile().post_json("/v1/workspaces", {"name": name})
    console.print(f"[green]Created[/green] workspace [bold]{name}[/bold]")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(workspace_app, name="workspace")
