"""``burst image``: the image root filesystems of the process runtime on this machine.

The process runtime keeps each image as a base and one layer per build step, in the
machine-wide image store (``$XDG_CACHE_HOME/burst/rootfs``, else ``/var/cache/burst/rootfs``
as root), shared by the agents of the machine. These commands work on that store directly,
so on a cluster run them on each agent machine; agents also evict least recently used
layers themselves past ``BURST_IMAGE_DISK_BUDGET_MB``. What a mounted image uses (one a
container of a running agent started from) is never removed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

image_app = typer.Typer(help="Image root filesystems of the process runtime on this machine.",
                        no_args_is_help=True)


def _store() -> Any:
    """The machine's image store (the agent's code: imported only here)."""
    try:
        from burst_agent.runtimes.images import cache_dir
        from burst_agent.runtimes.rootfs import Store
    except ImportError as e:  # an SDK-only install: no agent, no images here
        raise typer.BadParameter("no Burst agent is installed on this machine "
                                 "(burst image works on an agent machine's image store)") from e
    return Store(cache_dir("rootfs"))


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


@image_app.command("list")
def list_images(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Bases and build layers on this machine, least recently used first."""
    store = _store()
    used = store.used_paths()
    now = time.time()
    entries = [{**e, "in_use": e["path"] in used} for e in store.entries()]
    if as_json:
        print(json.dumps({"store": str(store.root), "entries": entries}, indent=2))
        return
    table = Table("name", "kind", "step", "size", "last used", "in use",
                  title=f"Images in {store.root}", title_justify="left")
    total = 0
    for e in entries:
        size = int(e["bytes"])
        total += size
        table.add_row(str(e["name"]), str(e["kind"]), str(e["label"])[:60],
                      f"{size / 2**20:.1f} MiB",
                      _age(now - float(e["last_used"])),
                      "yes" if e["in_use"] else "")
    Console().print(table)
    print(f"{len(entries)} entries, {total / 2**20:.1f} MiB")


@image_app.command("prune")
def prune(
    older_than: float = typer.Option(0.0, "--older-than", metavar="DAYS",
                                     help="Only what was last used more than DAYS days ago "
                                          "(default: everything unused)."),
) -> None:
    """Remove bases and layers no mounted image uses (last used over DAYS days ago)."""
    if older_than < 0:
        raise typer.BadParameter(f"--older-than {older_than:g}: give a number of days >= 0")
    removed = _store().prune(older_than, unmount=False)
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
