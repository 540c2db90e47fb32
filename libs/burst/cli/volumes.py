"""``burst volume``: create, list, browse, fill and delete volumes from a laptop.

Large files move with a progress bar; sizes are shown in human units (``--json`` for
exact bytes)."""

from __future__ import annotations

import datetime
import json
import posixpath
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from burst.exception import InvalidError
from burst.volume import FileEntryType, Volume

volume_app = typer.Typer(help="Volumes: files that outlive containers.", no_args_is_help=True)
console = Console(highlight=False)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                    transient=False)


@volume_app.command("create")
def create(name: str = typer.Argument(..., help="The volume's name.")) -> None:
    """Create an empty volume."""
    Volume.create(name)
    console.print(f"volume {name} created")
    console.print(f"Use it with burst.Volume.from_name({name!r}).", style="dim")


@volume_app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Volumes of your workspace, with their sizes."""
    vols = Volume.list()
    if json_out:
        print(json.dumps({"volumes": [{"name": v.name, "version": v.version, "files": v.files,
                                       "size": v.size, "created_at": v.created_at,
                                       "updated_at": v.updated_at} for v in vols]}, indent=2))
        return
    table = Table(title="Volumes", title_justify="left")
    for col in ("name", "files", "size", "created", "updated"):
        table.add_column(col, justify="right" if col in ("files", "size") else "left")
    for v in vols:
        table.add_row(v.name, str(v.files), human(v.size), _when(v.created_at),
                      _when(v.updated_at))
    console.print(table)


@volume_app.command("ls")
def ls(name: str = typer.Argument(..., help="The volume's name."),
       path: str = typer.Argument("/", help="A directory (or file) in the volume."),
       recursive: bool = typer.Option(False, "--recursive", "-r", help="Everything below."),
       json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List a directory of a volume."""
    entries = Volume.from_name(name).listdir(path, recursive=recursive)
    if json_out:
        print(json.dumps([{"path": e.path, "type": e.type.name.lower(), "size": e.size,
                           "mtime": e.mtime} for e in entries], indent=2))
        return
    table = Table(title=f"{name}:{path}", title_justify="left")
    for col in ("path", "type", "size", "modified"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for e in entries:
        is_dir = e.type == FileEntryType.DIRECTORY
        table.add_row(e.path + ("/" if is_dir else ""), "dir" if is_dir else "file",
                      "" if is_dir else human(e.size), _when(e.mtime))
    console.print(table)


@volume_app.command("put")
def put(name: str = typer.Argument(..., help="The volume's name."),
        local_path: Path = typer.Argument(..., help="A local file or directory."),
        remote_path: str = typer.Argument("/", help="Where in the volume ('/' ends a "
                                          "directory)."),
        force: bool = typer.Option(False, "--force", "-f", help="Replace existing files.")
        ) -> None:
    """Upload a file or directory into a volume (committed when all of it is there)."""
    vol = Volume.from_name(name)
    up = vol.batch_upload(force=force)
    if local_path.is_dir():
        up.put_directory(local_path, remote_path)
    elif local_path.is_file():
        target = remote_path
        if remote_path.endswith("/"):
            target = posixpath.join(remote_path, local_path.name)
        up.put_file(local_path, target)
    else:
        raise InvalidError(f"no local file or directory {str(local_path)!r}")
    total = up.total_bytes()
    with _progress() as bar:
        task = bar.add_task(f"uploading {local_path.name}", total=total)
        up.progress = lambda n: bar.advance(task, n)
        up.commit()
    console.print(f"uploaded {human(total)} to {name}:{remote_path}")


@volume_app.command("get")
def get(name: str = typer.Argument(..., help="The volume's name."),
        remote_path: str = typer.Argument(..., help="A file or directory of the volume."),
        local_path: str = typer.Argument(".", help="Where to write ('-': standard output)."),
        force: bool = typer.Option(False, "--force", help="Overwrite local files.")) -> None:
    """Download a file or directory of a volume."""
    vol = Volume.from_name(name)
    entries = [e for e in vol.listdir(remote_path, recursive=True)
               if e.type == FileEntryType.FILE]
    if local_path == "-":
        for e in entries:
            for piece in vol.read_file(e.path):
                sys.stdout.buffer.write(piece)
        return
    root = Path(local_path)
    base = remote_path.strip("/")
    single = len(entries) == 1 and entries[0].path == base
    with _progress() as bar:
        for e in entries:
            if single:
                dest = root / posixpath.basename(e.path) if root.is_dir() else root
            else:
                rel = e.path[len(base):].lstrip("/") if base else e.path
                dest = root / posixpath.basename(base) / rel if base else root / rel
            if dest.exists() and not force:
                raise InvalidError(f"{str(dest)!r} exists: use --force to overwrite it")
            dest.parent.mkdir(parents=True, exist_ok=True)
            task = bar.add_task(e.path, total=e.size)
            with dest.open("wb") as out:
                for piece in vol.read_file(e.path):
                    out.write(piece)
                    bar.advance(task, len(piece))
    console.print(f"downloaded {len(entries)} file(s), "
                  f"{human(sum(e.size for e in entries))}")


@volume_app.command("rm")
def rm(name: str = typer.Argument(..., help="The volume's name."),
       remote_path: str = typer.Argument(..., help="A file (or with -r, a directory)."),
       recursive: bool = typer.Option(False, "--recursive", "-r", help="Remove a directory.")
       ) -> None:
    """Remove a file or directory from a volume."""
    Volume.from_name(name).remove_file(remote_path, recursive=recursive)
    console.print(f"removed {name}:{remote_path}")


@volume_app.command("cp")
def cp(name: str = typer.Argument(..., help="The volume's name."),
       paths: list[str] = typer.Argument(..., help="Source paths, then the destination."),
       recursive: bool = typer.Option(False, "--recursive", "-r", help="Copy directories.")
       ) -> None:
    """Copy files within a volume (no bytes move: the contents are shared)."""
    if len(paths) < 2:
        raise InvalidError("give at least one source path and a destination")
    Volume.from_name(name).copy_files(paths[:-1], paths[-1], recursive=recursive)
    console.print(f"copied {len(paths) - 1} path(s) to {name}:{paths[-1]}")


@volume_app.command("delete")
def delete(name: str = typer.Argument(..., help="The volume's name."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Accepted for Modal's "
                                    "command line; nothing is asked.")) -> None:
    """Delete a volume and its files (their space is freed)."""
    Volume.delete(name)
    console.print(f"volume {name} deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(volume_app, name="volume")
