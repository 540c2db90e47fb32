"""The ``burst`` command.

Each group of commands lives in its own module of ``burst.cli`` with a ``register(app)``
function; adding one is one line in :func:`_register_commands`.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from burst.exception import Error

app = typer.Typer(
    name="burst",
    help="Burst: serverless compute for Python on machines you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register_commands() -> None:
    from burst.cli import cluster

    cluster.register(app)  # up, down, status
    from burst.cli import run as run_cmd

    run_cmd.register(app)  # run, deploy
    from burst.cli import tokens

    tokens.register(app)  # token create
    from burst.cli import billing

    billing.register(app)  # billing report
    from burst.cli import budget, webhook

    budget.register(app)  # budget set, list, clear
    webhook.register(app)  # webhook add, list, remove, test, deliveries
    from burst.cli import agents

    agents.register(app)  # agent list, agent preempt
    from burst.cli import schedules

    schedules.register(app)  # schedule list, pause, resume
    from burst.cli import apps

    apps.register(app)  # app list, status, stop
    from burst.cli import observe

    observe.register(app)  # app logs; container list, logs, stop, exec; shell
    from burst.cli import secrets, serve

    secrets.register(app)  # secret create, list, delete, rotate-key
    serve.register(app)  # serve
    from burst.cli import trace

    trace.register(app)  # trace CALL_ID
    from burst.cli import volumes

    volumes.register(app)  # volume create, list, ls, put, get, rm, cp, delete
    from burst.cli import profile

    profile.register(app)  # profile compose
    from burst.cli import compose

    compose.register(app)  # compose ARGS (docker compose -f deploy/compose/compose.yaml)
    from burst.cli import images

    images.register(app)  # image list, prune
    # Further command modules register here, one line each, e.g.:
    # from burst.cli import run as run_cmd; run_cmd.register(app)


_register_commands()


def report(error: BaseException) -> None:
    """Print ``error`` as one red line on stderr (plus its notes, e.g. a log tail)."""
    err = Console(stderr=True, highlight=False)
    err.print(Text("Error: ", style="bold red") + Text(str(error), style="red"), soft_wrap=True)
    for note in getattr(error, "__notes__", []):
        err.print(Text(note, style="dim"), soft_wrap=True)


def main() -> None:
    """Entry point of the ``burst`` console script: errors become one line, exit status 1."""
    try:
        app()
    except Error as e:
        report(e)
        sys.exit(1)
    except KeyboardInterrupt:
        report(KeyboardInterrupt("interrupted"))
        sys.exit(130)


if __name__ == "__main__":
    main()
