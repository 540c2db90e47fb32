"""``burst compose ARGS``: ``docker compose -f deploy/compose/compose.yaml ARGS``.

The compose cluster's agent mounts the engine's socket (``BURST_DOCKER_SOCKET``, by default
``/var/run/docker.sock``); this command takes it from ``DOCKER_HOST`` when that names a
local socket (``unix:///path``), so a cluster on another engine socket needs nothing else
set. Any other ``DOCKER_HOST`` (``tcp://``, ``ssh://``) is refused: the agent's containers
are siblings on the engine and share directories with it at the same path, which only a
local engine allows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import typer

from burst.cli.profile import default_compose_file
from burst.exception import InvalidError, NotFoundError


def compose_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``BURST_DOCKER_SOCKET`` from a ``unix://`` ``DOCKER_HOST`` (unset:
    compose.yaml's default, /var/run/docker.sock); an InvalidError for any other."""
    env = dict(environ)
    host = env.get("DOCKER_HOST", "").strip()
    if not host:
        return env
    path = host[len("unix://"):] if host.startswith("unix://") else ""
    if not path.startswith("/"):
        raise InvalidError(f"DOCKER_HOST={host!r} is not a local engine socket: the compose "
                           "cluster's agent mounts the engine's socket and shares directories "
                           "with its containers at the same path, so use "
                           "DOCKER_HOST=unix:///path/to/docker.sock (or leave it unset for "
                           "/var/run/docker.sock)")
    env["BURST_DOCKER_SOCKET"] = path
    return env


def compose_argv(args: list[str]) -> list[str]:
    """The ``docker compose`` command line ``burst compose ARGS`` runs."""
    docker = shutil.which("docker")
    if docker is None:
        raise NotFoundError("the docker CLI is not on PATH (`burst compose` runs "
                            "`docker compose`; `make install` links Compose v2 into it)")
    return [docker, "compose", "-f", str(default_compose_file()), *args]


def register(app: typer.Typer) -> None:
    @app.command("compose", add_help_option=False,
                 context_settings={"allow_extra_args": True,
                                   "ignore_unknown_options": True})
    def compose(ctx: typer.Context) -> None:
        """`docker compose -f deploy/compose/compose.yaml ARGS` (e.g. `burst compose up -d
        --wait --build`), with BURST_DOCKER_SOCKET from a unix:// DOCKER_HOST."""
        env = compose_env(os.environ)
        argv = compose_argv(list(ctx.args))
        os.execve(argv[0], argv, env)
