"""``burst secret``: credentials functions get as environment variables.

Values go to the gateway once and are never shown again: ``list`` names secrets and their
keys only.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from burst import secret as sdk_secret
from burst.client import Client
from burst.exception import InvalidError

secret_app = typer.Typer(help="Secrets: environment variables for functions.",
                         no_args_is_help=True)
console = Console(highlight=False)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise InvalidError(f"cannot read {str(path)!r}: {e.strerror}") from None
    except json.JSONDecodeError as e:  # its position, never the text around it
        raise InvalidError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg})") from None
    if not isinstance(data, dict):
        raise InvalidError(f"{path}: expected a JSON object of KEY: value, got a "
                           f"{type(data).__name__}")
    return sdk_secret.check_values(data, str(path))


def values_of(pairs: list[str], dotenv: Path | None, json_file: Path | None) -> dict[str, str]:
    """The values ``burst secret create`` sends: the .env file's, then the JSON file's,
    then the KEY=VALUE arguments' (a later one wins)."""
    values: dict[str, str] = {}
    if dotenv is not None:
        values.update(sdk_secret.read_dotenv(dotenv))
    if json_file is not None:
        values.update(_read_json(json_file))
    for i, pair in enumerate(pairs, 1):
        key, eq, value = pair.partition("=")
        if not eq:  # not echoed: a value typed without its KEY= would be shown
            raise InvalidError(f"argument {i} after the name is not KEY=VALUE")
        values[key] = value
    return sdk_secret.check_values(values, "burst secret create")


@secret_app.command("create")
def create(
    name: str = typer.Argument(..., help="The secret's name (letters, digits, '-', '_')."),
    pairs: list[str] = typer.Argument(None, help="KEY=VALUE pairs.", show_default=False),
    from_dotenv: Path = typer.Option(None, "--from-dotenv", help="Read KEY=VALUE lines "
                                     "from a .env file."),
    from_json: Path = typer.Option(None, "--from-json", help="Read a JSON object of "
                                   "KEY: value."),
    force: bool = typer.Option(False, "--force", help="Replace the values of an existing "
                               "secret (containers started afterwards get them)."),
) -> None:
    """Create a secret, or replace one with --force."""
    sdk_secret.check_name(name)
    values = values_of(list(pairs or []), from_dotenv, from_json)
    if not values:
        raise InvalidError("give at least one KEY=VALUE (or --from-dotenv / --from-json)")
    out = Client.from_profile().post_json("/v1/secrets", {"name": name, "values": values,
                                                          "force": force})
    verb = "updated" if out.get("version", 1) > 1 else "created"
    console.print(f"secret {out['name']} {verb} with keys {', '.join(out['keys'])}")
    console.print(f"Use it with burst.Secret.from_name({out['name']!r}).", style="dim")


@secret_app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Secrets of your workspace: names, keys and times (never values)."""
    data = Client.from_profile().get_json("/v1/secrets")
    if json_out:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"Secrets of workspace {data['workspace']}", title_justify="left")
    for col in ("name", "keys", "created", "updated"):
        table.add_column(col)
    for s in data["secrets"]:
        table.add_row(s["name"], ", ".join(s["keys"]), _when(s["created_at"]),
                      _when(s["updated_at"]))
    console.print(table)


@secret_app.command("delete")
def delete(name: str = typer.Argument(..., help="The secret's name."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Accepted for Modal's "
                                    "command line; nothing is asked.")) -> None:
    """Delete a secret (running containers keep their values; new ones cannot start)."""
    sdk_secret.check_name(name)
    Client.from_profile().request("DELETE", f"/v1/secrets/{name}")
    console.print(f"secret {name} deleted")


@secret_app.command("rotate-key")
def rotate_key(
    new_key: bool = typer.Option(True, "--new-key/--rewrap-only", help="Add a fresh master "
                                 "key first in $BURST_HOME/secrets.key (a local cluster), or "
                                 "only re-wrap under the newest key the gateway holds."),
) -> None:
    """Re-wrap every data key under a new master key, without downtime (operator token).

    Older keys stay in the ring after the new one: remove them once this has run."""
    from burst.config import burst_home, load_profile
    from burst_core import secrets as core_secrets

    home = burst_home()
    load_profile()  # a clear error when there is no cluster to talk to
    if new_key and os.environ.get(core_secrets.ENV_VAR):
        new_key = False  # the services' ring is BURST_MASTER_KEYS: the operator sets it
        console.print(f"{core_secrets.ENV_VAR} is set: re-wrapping under its newest key "
                      "(put a new key first there and restart the gateway before this)",
                      style="dim")
    elif new_key and (os.environ.get("BURST_URL") or not (home / "cluster.json").exists()):
        where = ("BURST_URL names the cluster" if os.environ.get("BURST_URL")
                 else f"no cluster started by `burst up` in {home}")
        raise InvalidError(f"{where}: add the new key "
                           "first to the key ring the gateway reads, then run "
                           "`burst secret rotate-key --rewrap-only`")
    if new_key:
        kid = core_secrets.add_master_key(home)
        console.print(f"added master key {kid} to {home / 'secrets.key'}")
    out = Client.from_profile().post_json("/v1/secrets/rotate-key", {})
    console.print(f"newest master key: {out['key_id']} ({out['keys_in_ring']} in the ring); "
                  f"re-wrapped {out['secrets_rewrapped']} stored secrets and "
                  f"{out['code_secrets_rewrapped']} secrets made in code; resealed "
                  f"{out['webhook_secrets_resealed']} webhook signing secrets")


def register(app: typer.Typer) -> None:
    app.add_typer(secret_app, name="secret")
