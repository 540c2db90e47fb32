"""``burst profile``: where this machine's ``burst`` finds its cluster.

``burst profile compose`` writes the profile of the compose cluster
(``deploy/compose/compose.yaml``): the gateway's published address, from
``docker compose port``, and a fresh operator token, made inside the gateway's container
(``python -m burst_gateway.mint_token``); after it, ``burst run examples/hello.py`` runs
there unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import typer
from rich.console import Console

from burst.client import Client
from burst.config import DEFAULT_WORKSPACE, Profile, burst_home, write_profile
from burst.exception import Error, InvalidError, NotFoundError, UnavailableError

profile_app = typer.Typer(help="Write the profile `burst` uses to reach a cluster.",
                          no_args_is_help=True)
console = Console(highlight=False)

#: The gateway's API port inside its container (compose.yaml publishes it on the host).
GATEWAY_PORT = 8780
#: Seconds a `docker compose` command may take.
COMPOSE_TIMEOUT = 60.0


def default_compose_file() -> Path:
    """deploy/compose/compose.yaml of the checkout this ``burst`` runs from."""
    import burst

    return Path(burst.__file__).resolve().parents[2] / "deploy" / "compose" / "compose.yaml"


def _compose(base: list[str], *args: str) -> str:
    argv = [*base, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UnavailableError(f"`{' '.join(argv)}` did not finish within "
                               f"{COMPOSE_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise UnavailableError(f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                               f"{done.stderr.strip()[-800:] or done.stdout.strip()[-800:]}")
    return done.stdout.strip()


def compose_profile(file: Path, project: str = "", workspace: str = DEFAULT_WORKSPACE
                    ) -> Profile:
    """The compose cluster's URL and a fresh operator token (checked against it)."""
    if not file.is_file():
        raise NotFoundError(f"compose file {file} not found: pass --file "
                            "deploy/compose/compose.yaml of a Burst checkout")
    docker = shutil.which("docker")
    if docker is None:
        raise NotFoundError("the docker CLI is not on PATH (`burst profile compose` runs "
                            "`docker compose port` and `docker compose exec`)")
    base = [docker, "compose", "-f", str(file)] + (["-p", project] if project else [])
    try:
        where = _compose(base, "port", "gateway", str(GATEWAY_PORT))
    except UnavailableError as e:
        raise UnavailableError(f"{e} (start the cluster with `docker compose -f {file}"
                               f"{' -p ' + project if project else ''} up -d --wait "
                               "--build`)") from None
    if not where or ":" not in where:
        raise UnavailableError(f"the compose cluster's gateway publishes no port {GATEWAY_PORT} "
                               f"(`docker compose port` said {where!r}): is it up? Run "
                               f"`docker compose -f {file} up -d --wait --build`")
    host, _, port = where.rpartition(":")
    if host in ("0.0.0.0", "", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}"
    token = _compose(base, "exec", "-T", "gateway", "python3", "-m",
                     "burst_gateway.mint_token", "--workspace", workspace,
                     "--name", "compose-profile").splitlines()[-1:]
    if not token or not token[0].startswith("bst_"):
        raise UnavailableError("the gateway's container printed no token "
                               f"({' '.join(token)!r})")
    profile = Profile(url=url, token=token[0], workspace=workspace)
    try:  # the token works against the published address
        Client(url, profile.token, timeout=10.0).get_json("/v1/apps")
    except Error as e:
        raise UnavailableError(f"the compose cluster at {url} refused the new token: {e}"
                               ) from None
    return profile


@profile_app.command("compose")
def compose(
    file: Path = typer.Option(None, "--file", "-f",
                              help="The compose file (default: deploy/compose/compose.yaml "
                                   "of this checkout)."),
    project: str = typer.Option("", "--project-name", "-p",
                                help="The compose project (default: the file's, `burst`)."),
    workspace: str = typer.Option(DEFAULT_WORKSPACE, "--workspace", "-w",
                                  help="Workspace of the token."),
) -> None:
    """Write $BURST_HOME/profile.json for the compose cluster: its gateway's published URL
    and a fresh operator token (the cluster must be up)."""
    if not workspace.strip():
        raise InvalidError("--workspace must not be empty")
    profile = compose_profile(file or default_compose_file(), project, workspace)
    path = write_profile(burst_home(), profile)
    console.print(f"profile written: {path} (gateway {profile.url}, workspace "
                  f"{profile.workspace})", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
