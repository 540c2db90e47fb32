"""``burst token``: API tokens (one workspace each)."""

from __future__ import annotations

import typer
from rich.console import Console

from burst.client import Client

token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
console = Console(highlight=False)


@token_app.command("create")
def create(
    workspace: str = typer.Option(..., "--workspace", "-w", help="Workspace of the new token."),
    name: str = typer.Option("", "--name", help="A label for the token."),
    admin: bool = typer.Option(False, "--admin", help="Make an operator token (scope admin: "
                               "cluster-wide views, tokens for any workspace)."),
    proxy_auth: bool = typer.Option(False, "--proxy-auth", help="Make a proxy-auth token for "
                                    "web endpoints with requires_proxy_auth=True: a key and "
                                    "a secret, sent as the Burst-Key and Burst-Secret headers."),
) -> None:
    """Create a token for WORKSPACE (needs an operator token). The token is printed once."""
    out = Client.from_profile().post_json("/v1/tokens", {
        "workspace": workspace, "name": name, "admin": admin, "proxy_auth": proxy_auth})
    if proxy_auth:
        console.print(f"Burst-Key: {out['token_id']}\nBurst-Secret: {out['token_secret']}",
                      markup=False)
        return
    console.print(out["token"])


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
