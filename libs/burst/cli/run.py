"""``burst run`` and ``burst deploy``: load an app file and run or deploy it."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from burst.app import App
from burst.exception import Error, InvalidError, NotFoundError

console = Console(stderr=True, highlight=False)


def load_app(ref: str) -> tuple[App, str | None]:
    """Import ``FILE[::NAME]`` with its directory as working directory and on sys.path.

    Returns the one ``burst.App`` it defines and the entrypoint name, if one was given.
    """
    file_part, _, name = ref.partition("::")
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise NotFoundError(f"file not found: {file_part}")
    if path.suffix != ".py":
        raise InvalidError(f"{file_part} is not a Python file (.py)")
    os.chdir(path.parent)
    sys.path.insert(0, str(path.parent))
    mod_name = path.stem
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise InvalidError(f"cannot import {file_part}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Error:
        raise
    except Exception as e:
        traceback.print_exc()
        raise InvalidError(f"importing {file_part} failed: {type(e).__name__}: {e}") from None
    apps = {k: v for k, v in vars(module).items() if isinstance(v, App)}
    if not apps:
        raise InvalidError(f"{file_part} defines no burst.App "
                           "(expected a module-level `app = burst.App(\"name\")`)")
    if len(apps) > 1:
        raise InvalidError(f"{file_part} defines {len(apps)} apps ({', '.join(sorted(apps))}); "
                           "keep one App per file")
    app = next(iter(apps.values()))
    if app.name is None:
        app.name = mod_name.lower().replace("_", "-")
    return app, name or None


def _entrypoint(app: App, name: str | None) -> Any:
    if name:
        if name in app.local_entrypoints:
            return app.local_entrypoints[name]
        if name.lower() in app.registered_functions:
            fn = app.registered_functions[name.lower()]
            return lambda: print(fn.remote())
        raise NotFoundError(f"app {app.name!r} has no entrypoint or function {name!r}")
    if len(app.local_entrypoints) == 1:
        return next(iter(app.local_entrypoints.values()))
    if len(app.local_entrypoints) > 1:
        raise InvalidError(f"app {app.name!r} has several local entrypoints "
                           f"({', '.join(app.local_entrypoints)}): pick one with FILE::NAME")
    if len(app.registered_functions) == 1:
        fn = next(iter(app.registered_functions.values()))
        return lambda: print(fn.remote())
    raise InvalidError(f"app {app.name!r} has no @app.local_entrypoint(); add one, or name a "
                       "function with FILE::NAME")


def run(
    ref: str = typer.Argument(..., metavar="FILE[::NAME]",
                              help="The app file, optionally with an entrypoint or function name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print remote output."),
) -> None:
    """Run an app's local entrypoint against the cluster, on an ephemeral copy of the app.

    The entrypoint runs in this process; its output passes through unchanged. What the
    app's functions print remotely is shown tagged with the function's name.
    """
    from burst._logs import LineSafeStream

    app, name = load_app(ref)
    entry = _entrypoint(app, name)
    os.environ["BURST_CLI"] = "1"  # progress bars for long maps, when stderr is a terminal
    sys.stdout = LineSafeStream(sys.stdout)
    sys.stderr = LineSafeStream(sys.stderr)
    failed = False
    with app.run(show_output=not quiet):
        try:
            entry()
        except Error as e:
            failed = True
            traceback.print_exc()
            console.print(f"[red]Error:[/red] {e}")
        except Exception:
            failed = True
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    if failed:
        raise typer.Exit(1)


def deploy(
    ref: str = typer.Argument(..., metavar="FILE", help="The app file."),
    name: str = typer.Option(None, "--name", help="Deploy under this app name."),
) -> None:
    """Deploy an app: its functions stay callable (Function.from_name, HTTP) until removed."""
    app, _ = load_app(ref)
    resp = app.deploy(name)
    console.print(f"[green]Deployed[/green] app [bold]{resp.app}[/bold] "
                  f"({resp.deployment_id}) in workspace {resp.workspace}: "
                  f"functions {', '.join(resp.functions)}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("deploy")(deploy)
