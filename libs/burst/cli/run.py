"""``burst run`` and ``burst deploy``: load an app file and run or deploy it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console

from burst import wire
from burst.app import App
from burst.cls import Cls
from burst.exception import Error, InvalidError, NotFoundError
from burst.functions import Function
from burst.output import enable_output

console = Console(stderr=True, highlight=False)


def _import(ref: str) -> tuple[dict[str, App], str, str]:
    """Import ``FILE[::NAME]`` with its directory as working directory and on sys.path.

    Returns the ``burst.App`` objects it defines (by variable name), the module name and
    NAME ("" when not given).
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
    for app in apps.values():
        if app.name is None:
            app.name = mod_name.lower().replace("_", "-")
    return apps, mod_name, name


def load_app(ref: str) -> tuple[App, str | None]:
    """The one ``burst.App`` that ``FILE[::NAME]`` defines, and NAME if given."""
    apps, _, name = _import(ref)
    if len(apps) > 1:
        raise InvalidError(f"{ref.partition('::')[0]} defines {len(apps)} apps "
                           f"({', '.join(sorted(apps))}); keep one App per file")
    return next(iter(apps.values())), name or None


@dataclass
class Target:
    """What ``burst run`` calls: a local entrypoint, a function or a class method."""

    app: App
    label: str
    raw: Callable[..., Any]  # the Python function whose parameters become options
    call: Callable[[dict[str, Any]], Any]
    is_method: bool = False


def _print_result(value: Any) -> None:
    if value is not None:
        print(value)


def _local(app: App, name: str) -> Target:
    f = app.local_entrypoints[name]

    def call(kw: dict[str, Any]) -> Any:
        out = f(**kw)
        if inspect.isawaitable(out):  # an `async def` entrypoint
            out = asyncio.run(_awaited(out))
        return out

    return Target(app, f"entrypoint {name}", f, call)


async def _awaited(aw: Any) -> Any:
    return await aw


def _function(app: App, fn: Function[..., Any]) -> Target:
    def call(kw: dict[str, Any]) -> None:
        if fn.spec.is_generator:
            for item in fn.remote_gen(**kw):
                _print_result(item)
        else:
            _print_result(fn.remote(**kw))

    return Target(app, f"function {fn.spec.name}", fn.raw_f, call)


def _method(app: App, cls: Cls, method: str) -> Target:
    if method not in cls.methods:
        raise NotFoundError(f"class {cls.__name__} has no @burst.method() {method!r} "
                            f"(methods: {', '.join(cls.methods)})")

    def call(kw: dict[str, Any]) -> None:
        _print_result(getattr(cls(), method).remote(**kw))

    return Target(app, f"method {cls.__name__}.{method}", getattr(cls.user_cls, method), call,
                  is_method=True)


def _names(app: App, mod: str) -> list[str]:
    out = list(app.local_entrypoints)
    for fn in app.registered_functions.values():
        if fn.spec.is_class:
            cls = _classes(mod).get(fn.raw_f.__name__)
            out += [f"{fn.raw_f.__name__}.{m}" for m in (cls.methods if cls else [])]
        else:
            out.append(fn.raw_f.__name__)
    return out


def _classes(mod: str) -> dict[str, Cls]:
    return {k: v for k, v in vars(sys.modules[mod]).items() if isinstance(v, Cls)}


def _in_app(app: App, mod: str, name: str) -> Target | None:
    if name in app.local_entrypoints:
        return _local(app, name)
    head, _, method = name.partition(".")
    cls = _classes(mod).get(head)
    if cls is not None and cls._function.app is app:
        if not method:
            raise InvalidError(f"{name} is a class: name one of its methods, "
                               f"e.g. ::{name}.{cls.methods[0]}")
        return _method(app, cls, method)
    fn = app.registered_functions.get(name.lower())
    if fn is not None and not fn.spec.is_class and not method:
        return _function(app, fn)
    return None


def resolve(apps: dict[str, App], mod: str, name: str) -> Target:
    """The target ``FILE::NAME`` names (NAME may start with an app's variable name)."""
    if name:
        head, _, rest = name.partition(".")
        if head in apps and len(apps) > 1:
            app = apps[head]
            if not rest:
                return resolve({head: app}, mod, "")
            found = _in_app(app, mod, rest)
            if found is None:
                raise NotFoundError(f"app {head} has no entrypoint, function or method "
                                    f"{rest!r} (it has: {', '.join(_names(app, mod))})")
            return found
        hits = [t for t in (_in_app(a, mod, name) for a in apps.values()) if t is not None]
        if len(hits) == 1:
            return hits[0]
        every = sorted({n for a in apps.values() for n in _names(a, mod)})
        if not hits:
            raise NotFoundError(f"no entrypoint, function or method {name!r} "
                                f"(there are: {', '.join(every) or 'none'})")
        raise InvalidError(f"{name!r} is in several apps ({', '.join(sorted(apps))}): "
                           "name the app too, e.g. ::APP_VARIABLE.NAME")
    if len(apps) > 1:
        raise InvalidError(f"the file defines {len(apps)} apps ({', '.join(sorted(apps))}): "
                           "pick one with FILE::APP_VARIABLE, or an entrypoint with FILE::NAME")
    app = next(iter(apps.values()))
    if len(app.local_entrypoints) == 1:
        return _local(app, next(iter(app.local_entrypoints)))
    if len(app.local_entrypoints) > 1:
        raise InvalidError(f"app {app.name!r} has several local entrypoints "
                           f"({', '.join(app.local_entrypoints)}): pick one with FILE::NAME")
    plain = [f for f in app.registered_functions.values() if not f.spec.is_class]
    if len(app.registered_functions) == 1 and plain:
        return _function(app, plain[0])
    raise InvalidError(f"app {app.name!r} has no @app.local_entrypoint(); add one, or name a "
                       f"function with FILE::NAME (there are: {', '.join(_names(app, mod))})")


_RUN_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True,
                 "allow_interspersed_args": False}


def run(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="FILE[::NAME]",
                              help="The app file, optionally with an entrypoint, function "
                              "(or Class.method) name, then that entrypoint's options."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print remote output."),
    detach: bool = typer.Option(False, "--detach", help="Leave the app running after this "
                                "process exits (until `burst app stop APP_ID`)."),
) -> None:
    """Run an app's local entrypoint against the cluster, on an ephemeral copy of the app.

    The entrypoint's parameters are options after the file: `burst run app.py --n 3`.

    `burst run app.py --help` lists them.

    FILE::NAME picks one of several entrypoints, or calls a function or Class.method
    remotely and prints its result.

    The entrypoint runs in this process; its output passes through unchanged. What the
    app's functions print remotely is shown tagged with the function's name.

    The run lives as long as this process: if it dies, the cluster stops the app (its
    queued calls cancelled) after 10 s without heartbeats. --detach leaves it running.
    """
    from burst import _entrypoint
    from burst._logs import LineSafeStream

    apps, mod, name = _import(ref)
    target = resolve(apps, mod, name)
    try:  # parsed before anything is deployed: bad input leaves nothing running
        kwargs = _entrypoint.parse(target.raw, target.label.split()[-1], list(ctx.args),
                                   f"burst run {ref}", skip_first=target.is_method,
                                   help_text=inspect.getdoc(target.raw) or "")
    except click.ClickException as e:
        e.show()
        raise typer.Exit(e.exit_code) from None
    if kwargs is None:  # --help
        return
    app = target.app
    os.environ["BURST_CLI"] = "1"  # progress bars for long maps, when stderr is a terminal
    sys.stdout = LineSafeStream(sys.stdout)
    sys.stderr = LineSafeStream(sys.stderr)
    failed = False
    output = contextlib.nullcontext() if quiet else enable_output()
    with output, app.run(detach=detach):
        if detach:
            console.print(f"[yellow]Detached:[/yellow] app {app.name or 'app'} runs as "
                          f"[bold]{app.app_id}[/bold] until `burst app stop {app.app_id}`")
        try:
            target.call(kwargs)
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
    strategy: str = typer.Option("rolling", "--strategy", help="How a running version's "
                                 "containers leave: rolling (they finish their calls, then "
                                 "stop) or recreate (stopped first; their calls run again)."),
) -> None:
    """Deploy an app: its functions stay callable (Function.from_name, HTTP) until removed.
    Deploying again makes a new version (`burst app history`, `burst app rollback`).

    The agents build the app's images as it is deployed: their output is shown here, step
    by step, and the command ends once they are built (exit 1 if a build failed)."""
    from burst._builds import BuildWatcher
    from burst.client import Client

    try:
        wire.check_strategy(strategy)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    app, _ = load_app(ref)
    client = Client.from_profile()
    images = {f.spec.image.content_hash[:12]: f.spec.name
              for f in app.registered_functions.values()
              if f.spec.image is not None and f.spec.image.content_hash}
    watcher = None
    if images and (name or app.name):
        watcher = BuildWatcher(client, name or app.name or "", images)
        watcher.start()
        watcher.subscribed.wait(10)
    failures: list[str] = []
    try:
        resp = app.deploy(name, client=client, strategy=strategy)
        if watcher is not None:
            failures, unstarted = watcher.wait()
            if unstarted:
                console.print(f"No agent started building the image of "
                              f"{', '.join(unstarted)}: it is built when a container first "
                              "starts.")
    finally:
        if watcher is not None:
            watcher.stop()
    version = f"version {resp.version}, " if resp.version else ""
    console.print(f"[green]Deployed[/green] app [bold]{resp.app}[/bold] "
                  f"({version}{resp.deployment_id}) in workspace {resp.workspace}: "
                  f"functions {', '.join(resp.functions)}")
    for endpoint, url in resp.web_urls.items():
        console.print(f"  web endpoint {endpoint}: {url}", markup=False, highlight=False,
                      soft_wrap=True)
    if failures:
        for f in failures:
            console.print(f"[red]Image build failed[/red]: {f}", soft_wrap=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=_RUN_SETTINGS)(run)
    app.command("deploy")(deploy)
