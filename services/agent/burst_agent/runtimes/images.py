"""Function images on the agent: what a runtime is asked to run, and what it can honour.

Light on purpose (no Docker SDK): the container lifecycle imports it whatever the runtime.
The Docker runtime turns an :class:`ImageSpec` into a Dockerfile here (``dockerfile``), so
the translation is testable without an engine.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from burst import wire
from burst.image import PYTHON_SOURCE_DIR, describe
from burst_agent.runtimes.base import ContainerSpec

#: The machine-built base image of ``Image.debian_slim(python_version)`` (deploy/base-image.sh).
BASE_IMAGES = {"3.11": "burst-base:py311"}
#: Where the bundle (the app's source) and the agent's socket appear in a Docker container.
BUNDLE_DIR = "/burst/bundle"
SOCKET_PATH = "/run/burst/shim.sock"


def cache_dir(kind: str) -> Path:
    """The machine-wide cache of built things (``wheels``, ``venvs``): under
    ``$XDG_CACHE_HOME/burst`` when set (CI keeps it in the checkout), else
    ``/var/cache/burst`` as root or ``~/.cache/burst``. Never under ``$BURST_HOME``,
    ``/root`` or ``/tmp``, which the process runtime's sandbox covers."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "burst" / kind
    if os.geteuid() == 0:
        return Path("/var/cache/burst") / kind
    return Path.home() / ".cache" / "burst" / kind


class ImageError(Exception):
    """An image cannot be built or run here. The first line says which step and why (it
    reaches the caller as "container failed to start: ..."); later lines carry the output."""


@dataclass
class ImageContainerSpec(ContainerSpec):
    """A container spec with the function's image (None: the runtime's default)."""

    image: wire.ImageSpec | None = None
    #: Receives build output lines as they come (the agent forwards them to the app's logs).
    build_log: Callable[[str], None] | None = None


def process_env(image: wire.ImageSpec | None) -> dict[str, str]:
    """The environment an image's ``env`` steps give a process-runtime container."""
    env: dict[str, str] = {}
    for step in image.steps if image is not None else []:
        if step.kind == "env":
            env.update(step.env)
    return env


@dataclass
class Dockerfile:
    text: str
    #: Instruction number (1-based, as the builder's "Step N/M" counts) -> what it does,
    #: in the user's words, so a failed build names the step.
    labels: dict[int, str]
    #: Build-context files: context path -> content.
    files: dict[str, bytes]
    workdir: str
    env: dict[str, str]


def base_tag(image: wire.ImageSpec | None) -> str:
    if image is not None and image.base == "registry":
        return str(image.registry_tag)
    version = image.python_version if image is not None else "3.11"
    if version not in BASE_IMAGES:
        raise ImageError(f"Image.debian_slim(python_version={version!r}): no base image for it "
                         f"on this machine's Docker engine (available: "
                         f"{', '.join(BASE_IMAGES)}; the process runtime builds "
                         "the others from the Debian mirror)")
    return BASE_IMAGES[version]


def dockerfile(image: wire.ImageSpec | None, wheels: list[str]) -> Dockerfile:
    """The Dockerfile of an image: the base, the user's steps in order, then Burst's shim
    (from ``wheels``, in the build context under ``wheels/``) in a layer of its own, last:
    a new Burst leaves the user's layers cached (pip installs are not run again)."""
    lines = [f"FROM {base_tag(image)}", "USER root"]
    labels = {1: f"the base image {base_tag(image)}", 2: "USER root"}
    files: dict[str, bytes] = {}
    env: dict[str, str] = {}
    workdir = ""

    def add(line: str, label: str) -> None:
        lines.append(line)
        labels[len(lines)] = label

    add("ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
        "PIP_ROOT_USER_ACTION=ignore "
        f"PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH={PYTHON_SOURCE_DIR}",
        "the image's defaults (ENV)")
    for i, step in enumerate(image.steps if image is not None else []):
        what = describe(step)
        if step.kind == "pip_install":
            pkgs = " ".join(shlex.quote(p) for p in step.args)
            add(f"RUN python3 -m pip install --no-cache-dir {pkgs}", what)
        elif step.kind == "apt_install":
            pkgs = " ".join(shlex.quote(p) for p in step.args)
            add("RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                f"--no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*", what)
        elif step.kind == "run_commands":
            for cmd in step.args:
                add(f"RUN {json.dumps(['/bin/sh', '-c', cmd])}", f"{what}: {cmd!r}")
        elif step.kind == "env":
            if step.env:
                add("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in step.env.items()), what)
            env.update(step.env)
        elif step.kind == "workdir":
            add(f"WORKDIR {json.dumps(step.path)}", what)
            workdir = step.path
        elif step.kind in ("add_local_file", "add_local_dir", "add_local_python_source"):
            ctx = f"files/{i}"
            for rel, data in step.files.items():
                if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
                    raise ImageError(f"Image step {what}: invalid file name {rel!r}")
                files[f"{ctx}/{rel}"] = data
            if step.kind == "add_local_file" and len(step.files) == 1:
                src = f"{ctx}/{next(iter(step.files))}"
                add(f"COPY {json.dumps([src, step.path])}", what)
            else:
                add(f"COPY {json.dumps([ctx + '/', step.path.rstrip('/') + '/'])}", what)
        else:
            raise ImageError(f"Image step {what}: unknown step kind (is this agent older than "
                             "the SDK?)")
    shim = "Burst's shim layer (pip install of the burst wheel)"
    add("COPY wheels/ /opt/burst/wheels/", shim)
    names = " ".join(shlex.quote(w) for w in wheels)
    add(f"RUN cd /opt/burst/wheels && python3 -m pip install -q --no-cache-dir --no-index "
        f"--find-links . {names} && rm -rf /opt/burst/wheels", shim)
    return Dockerfile("\n".join(lines) + "\n", labels, files, workdir, env)
