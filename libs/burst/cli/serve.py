"""``burst serve app.py``: the app's web endpoints served while their source is edited.

The app is deployed as an ephemeral run of the app (it carries the app's name, so the
app's budgets cover it) whose id is ``{app}-dev``: its URLs end in ``-dev``
(``/{workspace}/{app}-dev/...``) and stay the same across redeploys. It lives while this
process heartbeats (``burst run``'s client heartbeat): a ``burst serve`` that is killed
leaves nothing running once the cluster's client timeout has passed. The URLs are
printed; the Python files under the app file's folder are watched (every
``BURST_SERVE_POLL`` seconds, 0.2) and on a change the app is deployed again (into the
same run), in a fresh interpreter, so the local modules it imports are read anew. A second
``burst serve`` of the app is refused while the first one heartbeats. The agents then
give new requests to containers of the new version (held while one starts) and stop the
old containers once their requests are done. A save that does not import (a syntax
error) is shown, and the last good version keeps serving. Ctrl-C removes the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from burst.exception import Error, InvalidError

console = Console(stderr=True, highlight=False)

#: Folders never watched (virtual environments, caches, VCS data).
_SKIP = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache"}
#: Most files watched (a folder with more is watched in part).
_MAX_FILES = 5000


def _sources(root: Path) -> dict[Path, float]:
    """Modification times of the Python files under ``root``."""
    out: dict[Path, float] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP and not d.startswith(".")]
        for f in files:
            if f.endswith(".py"):
                p = Path(folder) / f
                try:
                    out[p] = p.stat().st_mtime_ns
                except OSError:
                    continue
                if len(out) >= _MAX_FILES:
                    return out
    return out


def _deploy_once(ref: str, client_id: str) -> None:
    """In a fresh interpreter: import the app, deploy it as the serve run ``{app}-dev``
    kept alive by ``client_id``, print JSON."""
    from burst.cli.run import load_app

    app, _ = load_app(ref)
    if app.name is None:
        raise InvalidError(f"the app in {ref} has no name: `burst serve` needs "
                           "burst.App('name')")
    try:
        resp = app.deploy(app.name, client_id=client_id, _serve=True)
    except Error as e:  # the cluster refused it: its message, not a traceback
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps({"app": resp.app, "web_urls": resp.web_urls}))


def _deploy(file: Path, client_id: str, first: bool = False) -> dict[str, object] | None:
    """Deploy the file's app; None (its error shown) when it does not import or deploy."""
    proc = subprocess.run([sys.executable, "-m", "burst.cli.serve", str(file), client_id],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        console.print("[red]not deployed[/red]" if first else
                      "[red]not deployed[/red]: the last good version keeps serving",
                      markup=True)
        console.print(proc.stderr.strip(), markup=False, soft_wrap=True)
        return None
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def serve(file: str = typer.Argument(..., metavar="FILE", help="The app file.")) -> None:
    """Serve an app's web endpoints as the ephemeral run ``{app}-dev``, redeploying on
    each save; Ctrl-C removes it."""
    from burst import _heartbeat
    from burst.client import Client

    path = Path(file).expanduser().resolve()
    if not path.is_file() or path.suffix != ".py":
        raise InvalidError(f"{file} is not a Python file (.py)")
    poll = float(os.environ.get("BURST_SERVE_POLL", "0.2"))
    if not 0.01 <= poll <= 60:
        raise InvalidError(f"BURST_SERVE_POLL={poll} is out of range: allowed 0.01 to 60 s")
    root = path.parent
    seen = _sources(root)
    client = Client.from_profile()
    with _heartbeat.held(client) as client_id:
        first = _deploy(path, client_id, first=True)
        if first is None:
            raise typer.Exit(1)
        app = str(first["app"])
        _show(first)
        try:
            while True:
                time.sleep(poll)
                now = _sources(root)
                if now == seen:
                    continue
                seen = now
                console.print("change detected: redeploying", markup=False)
                again = _deploy(path, client_id)
                if again is not None:
                    _show(again)
        except KeyboardInterrupt:
            pass
        finally:
            try:
                client.remove_app(app)
                console.print(f"removed app {app}", markup=False)
            except Exception as e:  # noqa: BLE001 - tell, and exit anyway
                console.print(f"could not remove app {app}: {e}", markup=False)


def _show(result: dict[str, object]) -> None:
    urls = result.get("web_urls") or {}
    assert isinstance(urls, dict)
    console.print(f"serving app {result['app']}" + ("" if urls else " (no web endpoints)"),
                  markup=False)
    for endpoint, url in urls.items():
        console.print(f"  web endpoint {endpoint}: {url}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


if __name__ == "__main__":
    _deploy_once(sys.argv[1], sys.argv[2])
