"""Function images on the agent: what a runtime is asked to run, and what it can honour.

Light on purpose (no Docker SDK): the container lifecycle imports it whatever the runtime.
The Docker runtime turns an :class:`ImageSpec` into a Dockerfile here (``dockerfile``), so
the translation is testable without an engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import zipfile
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
#: Steps that install Python packages with pip (``uv_pip_install`` uses uv).
PIP_STEPS = ("pip_install", "pip_install_from_requirements", "pip_install_from_pyproject")
#: Where files a build step needs (``step_files``) are put in the image.
BUILD_DIR = "/opt/burst/build"
#: Where ``uv_pip_install`` installs uv (from the package index) in the image.
UV_DIR = "/opt/burst/uv"


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


#: Run by the image's (or the agent's) ``python3``: the machine's pip configuration (files
#: and ``PIP_*``, as ``pip config list`` shows it) as uv's own settings, which uv reads
#: instead of pip's: index, extra indexes, find-links, constraints, certificates, timeout.
#: Locations that do not exist where it runs are left out. Prints ``export`` lines (or, with
#: the argument ``json``, a JSON object).
UV_SETTINGS = """\
import json, os, shlex, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                     text=True).stdout
cfg, from_env = {}, {}
for line in out.splitlines():
    name, _, value = line.partition("=")
    scope, _, key = name.partition(".")
    value = value.strip().strip("'\\"").replace("\\\\n", " ")
    (from_env if scope == ":env:" else cfg)[key] = value
cfg.update(from_env)  # PIP_* variables win over the files, as in pip
def here(loc):
    if loc.startswith("file://"):
        return os.path.exists(loc[7:])
    return "://" in loc or os.path.exists(loc)
env = {}
if cfg.get("index-url"):
    env["UV_INDEX_URL"] = cfg["index-url"]
for key, var, sep in (("extra-index-url", "UV_EXTRA_INDEX_URL", " "),
                      ("find-links", "UV_FIND_LINKS", ","), ("constraint", "UV_CONSTRAINT", " ")):
    found = [loc for loc in cfg.get(key, "").split() if here(loc)]
    if found:
        env[var] = sep.join(found)
if "UV_EXTRA_INDEX_URL" in env:  # pip takes the best match of all indexes; uv, the first's
    env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
cert = cfg.get("cert") or os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
if cert and os.path.exists(cert):
    env["SSL_CERT_FILE"] = cert
if cfg.get("default-timeout") or cfg.get("timeout"):
    env["UV_HTTP_TIMEOUT"] = str(int(float(cfg.get("default-timeout") or cfg["timeout"])))
if sys.argv[1:] == ["json"]:
    print(json.dumps(env))
else:
    for k, v in env.items():
        print("export %s=%s" % (k, shlex.quote(v)))
"""

#: Runs a ``run_function`` step's pickle (argv[1]) with the image's Python; cloudpickle
#: comes from a zip beside it, on ``PYTHONPATH`` for this command only.
_RUN_FUNCTION = """\
import pickle, sys
want = sys.argv[2]
have = "%d.%d" % sys.version_info[:2]
if have != want:
    sys.exit("run_function: the function was defined under Python %s but the image has "
             "Python %s; use an image of the same Python version" % (want, have))
with open(sys.argv[1], "rb") as f:
    fn, args, kwargs = pickle.load(f)
fn(*args, **kwargs)
"""


def pip_options(step: wire.ImageStep, uv: bool = False) -> list[str]:
    """The command-line options of a ``pip_install*``/``uv_pip_install`` step."""
    opts: list[str] = []
    if step.index_url:
        opts += ["--index-url", step.index_url]
    for url in step.extra_index_url.split():
        opts += ["--extra-index-url", url]
    for loc in step.find_links.split():
        opts += ["--find-links", loc]
    if step.pre:
        opts.append("--prerelease=allow" if uv else "--pre")
    return opts + shlex.split(step.extra_options)


def cloudpickle_zip() -> bytes:
    """The agent's cloudpickle package as an importable zip (fixed timestamps, so its
    bytes, and a build cache keyed on them, stay the same)."""
    import cloudpickle

    root = Path(cloudpickle.__file__).parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*.py")):
            info = zipfile.ZipInfo(f"cloudpickle/{p.relative_to(root).as_posix()}",
                                   (1980, 1, 1, 0, 0, 0))
            z.writestr(info, p.read_bytes())
    return buf.getvalue()


def _payload_path(step: wire.ImageStep) -> str:
    return f"{BUILD_DIR}/run_function-{hashlib.sha256(step.payload).hexdigest()[:16]}.pkl"


def step_files(step: wire.ImageStep) -> dict[str, bytes]:
    """Files (absolute path in the image -> content) that must be in place before the
    commands of :func:`step_shell` run; ``run_function`` needs its pickle and cloudpickle."""
    if step.kind == "run_function":
        return {f"{BUILD_DIR}/cloudpickle.zip": cloudpickle_zip(),
                _payload_path(step): step.payload}
    return {}


def step_shell(step: wire.ImageStep) -> list[str] | None:
    """The shell commands of a command-like step, in order, each run by ``/bin/sh -c``
    inside the image as root, with the image's ``env`` and ``workdir`` so far and the
    network; None for steps that are not commands (``env``, ``workdir``, ``entrypoint``,
    ``add_local_*``). The one translation both the Docker runtime (a ``RUN`` each) and the
    process runtime's root filesystems (a chroot) run; :func:`step_files` first."""
    # A pip step's own env= holds for its command only.
    pre = "".join(f"export {shlex.quote(f'{k}={v}')}; " for k, v in step.env.items()) \
        if step.kind != "env" else ""
    if step.kind in PIP_STEPS:
        return [pre + shlex.join(["python3", "-m", "pip", "install", "--no-cache-dir",
                                  *pip_options(step), *step.args])]
    if step.kind == "uv_pip_install":
        uv = f"{UV_DIR}/bin/uv"
        return [f"{pre}{{ [ -x {uv} ] || python3 -m pip install -q --no-cache-dir --target "
                f"{UV_DIR} uv; }} && eval \"$(python3 -c {shlex.quote(UV_SETTINGS)})\" && "
                + shlex.join([uv, "pip", "install", "--system", "--break-system-packages",
                              "--no-cache", *pip_options(step, uv=True), *step.args])]
    if step.kind == "apt_install":
        pkgs = " ".join(shlex.quote(p) for p in step.args)
        return ["apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                f"--no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*"]
    if step.kind == "run_commands":
        return list(step.args)
    if step.kind == "run_function":
        pkl = _payload_path(step)
        want = step.args[0] if step.args else "3.11"
        return [f"PYTHONPATH={BUILD_DIR}/cloudpickle.zip${{PYTHONPATH:+:$PYTHONPATH}} python3 -c "
                f"{shlex.quote(_RUN_FUNCTION)} {pkl} {shlex.quote(want)} && rm -f {pkl}"]
    return None


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


#: Where ``from_registry(tag, add_python=...)`` puts the machine's base image (its Python
#: runs with the base's own loader and libraries, whatever the image's are).
ADDED_PYTHON = "/opt/burst/python-root"


def add_python(image: wire.ImageSpec, add: Callable[[str, str], None]) -> None:
    """The first instructions of a ``from_registry(tag, add_python=V)`` image: the base
    image of Python V copied under :data:`ADDED_PYTHON`, its interpreter behind a script
    that starts it with the base's loader and libraries (glibc's ``--argv0`` keeps
    ``sys.executable`` on the script, so pip's subprocesses do the same), and ``python3``/
    ``python`` in ``/usr/local/bin``. The image needs ``/bin/sh``."""
    version = image.add_python
    if version not in BASE_IMAGES:
        raise ImageError(f"Image.from_registry({image.registry_tag!r}, add_python="
                         f"{version!r}): no base image for it on this machine (available: "
                         f"{', '.join(BASE_IMAGES)})")
    what = f"add_python={version!r}"
    root, lib = ADDED_PYTHON, "/usr/lib/x86_64-linux-gnu"
    real = f"/usr/bin/python{version}"
    script = (f"#!/bin/sh\nexec {root}{lib}/ld-linux-x86-64.so.2 --library-path {root}{lib} "
              f"--argv0 \"$0\" {root}{real}.real \"$@\"\n")
    add(f"FROM {BASE_IMAGES[version]} AS burst-python", f"{what}: the base image "
        f"{BASE_IMAGES[version]}")
    add("RUN " + json.dumps(["/bin/sh", "-c", (
        f"mv {real} {real}.real && printf '%s' {shlex.quote(script)} > {real} && "
        f"chmod 755 {real} && mkdir -p /burst-out/usr/local/bin && "
        f"ln -s {root}{real} /burst-out/usr/local/bin/python3 && "
        f"ln -s {root}{real} /burst-out/usr/local/bin/python")]), f"{what}: its interpreter")
    add(f"FROM {image.registry_tag}", f"the base image {image.registry_tag}")
    add(f"COPY --from=burst-python / {root}/", f"{what}: copy it into the image")
    add("COPY --from=burst-python /burst-out/ /", f"{what}: python3 on the PATH")
    certs = f"{root}/etc/ssl/certs/ca-certificates.crt"
    add(f"ENV SSL_CERT_FILE={certs} PIP_CERT={certs} PATH=$PATH:{root}/usr/local/bin",
        f"{what}: the machine's certificates, scripts of pip packages on the PATH")


def dockerfile(image: wire.ImageSpec | None, wheels: list[str]) -> Dockerfile:
    """The Dockerfile of an image: the base, the user's steps in order, then Burst's shim
    (from ``wheels``, in the build context under ``wheels/``) in a layer of its own, last:
    a new Burst leaves the user's layers cached (pip installs are not run again)."""
    lines: list[str] = []
    labels: dict[int, str] = {}
    files: dict[str, bytes] = {}
    env: dict[str, str] = {}
    workdir = ""

    def add(line: str, label: str) -> None:
        lines.append(line)
        labels[len(lines)] = label

    if image is not None and image.add_python:
        add_python(image, add)
    else:
        add(f"FROM {base_tag(image)}", f"the base image {base_tag(image)}")
    add("USER root", "USER root")
    if image is not None and image.force_build:  # on the base: every step misses the cache
        add(f"LABEL burst.force_build={json.dumps(image.force_build)}",
            f"the base image {base_tag(image)} (force_build)")

    add("ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "
        "PIP_ROOT_USER_ACTION=ignore "
        f"PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH={PYTHON_SOURCE_DIR}",
        "the image's defaults (ENV)")
    for i, step in enumerate(image.steps if image is not None else []):
        if step.mounted:  # files added at start: bound as each container starts
            continue
        what = describe(step)
        if step.force_build:
            # A changed instruction: this step and all after it miss the build cache.
            add(f"LABEL burst.force_build.{i}={json.dumps(step.force_build)}", what)
        for n, (dest, data) in enumerate(sorted(step_files(step).items())):
            ctx = f"files/{i}/build/{n}"
            files[ctx] = data
            add(f"COPY {json.dumps([ctx, dest])}", what)
        commands = step_shell(step)
        if commands is not None:
            for cmd in commands:
                label = f"{what}: {cmd!r}" if step.kind == "run_commands" else what
                add(f"RUN {json.dumps(['/bin/sh', '-c', cmd])}", label)
        elif step.kind == "env":
            if step.env:
                add("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in step.env.items()), what)
            env.update(step.env)
        elif step.kind == "workdir":
            add(f"WORKDIR {json.dumps(step.path)}", what)
            workdir = step.path
        elif step.kind == "entrypoint":
            add(f"ENTRYPOINT {json.dumps(list(step.args))}", what)
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
