"""Images on the process runtime: a root filesystem per image, built in layers.

An image whose steps go beyond ``pip_install``/``env``/``add_local_python_source`` on the
default Python (``needs_rootfs``) is materialised as a root filesystem, and its containers
run inside it (``Sandbox.command(rootfs=...)``: the view bound read-only at ``/``).

- **Base**: ``debian_slim(python_version)`` is a Debian release with its Python (bookworm's
  3.11, trixie's 3.13): exported from the local Docker engine where one runs and has the
  base image (``deploy/base-image.sh`` builds ``burst-base:py311`` in CI), else made once by
  ``debootstrap`` from the machine's Debian mirror (its apt sources rewritten for its own
  release: ``apt_sources_for``). ``from_registry(tag)`` is exported from
  the local Docker engine (there is no registry to pull from).
- **Layers**: every command-like step (``images.step_shell``: one layer per command, as the
  Docker runtime's RUN lines) and every file or config step is one layer, keyed by the hash
  of its parent's key and the step, holding what the step changed (an overlayfs upper
  directory). A step runs as root in a chroot (bwrap) of the overlay of the layers below it,
  with Docker's default capabilities less ``CAP_MKNOD``, its own pid namespace and ``/proc``,
  and the containers' network (NAT with deny rules: never the cluster or the host's
  loopback; none where containers get none); a layer is built in a scratch
  directory and renamed into place when the step succeeded, under a file lock: a failed step
  leaves nothing, and two agents building the same image end with the same layers. A
  changed last step rebuilds only that step.
- **View**: the image's layers mounted read-only (overlayfs, once per agent process) above
  a small layer of Burst's mount points; the container's python imports Burst's shim from a
  directory made per Python version and bound at ``SHIM_DIR`` (as the Docker runtime adds it
  as a layer).
- **Storage**: every use touches the layers it uses; past ``disk_budget_mb`` the least
  recently used layers and bases that no mounted view uses (in any mount namespace: a
  running container's sandbox keeps its own) are removed (``evict``); ``burst image list``
  and ``burst image prune`` work on this directory (``entries``, ``prune``).

Needs root (overlayfs mounts, chroot); the error says so otherwise.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import msgspec

from burst import wire
from burst.image import PYTHON_SOURCE_DIR, describe
from burst_agent.runtimes import images
from burst_agent.runtimes.images import ImageError
from burst_core import logs

if TYPE_CHECKING:
    from burst_agent.runtimes.network import Network

log = logs.get("burst.agent.rootfs")

#: Debian release of each Python version ``debian_slim`` offers.
DEBIAN_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}
#: The base image CI builds (deploy/base-image.sh) for a version, reused where present.
DOCKER_BASES = {"3.11": "burst-base:py311"}
#: Steps the default fast path (the agent's interpreter and a venv) honours.
FAST_STEPS = ("env", "add_local_python_source", "uv_pip_install", *images.PIP_STEPS)
#: Where Burst's shim (burst, msgspec, cloudpickle) appears in a materialised image.
SHIM_DIR = "/opt/burst/shim"
#: What every build step and container gets before the image's own variables.
DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_ROOT_USER_ACTION": "ignore",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
#: Capabilities of a build step's root (Docker's default set, less ``CAP_MKNOD``: no device
#: cgroup guards the host's disks here): enough for apt, pip and most commands; no mounts,
#: no raw devices, no module loading, no tracing.
BUILD_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
              "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW",
              "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_SETFCAP")
#: Lines of a failed step's output its error carries.
ERROR_TAIL = 30
#: Mount points the container's sandbox binds onto (a read-only view cannot get new ones).
MOUNT_DIRS = ("opt/burst/shim", "opt/burst/python", "run/burst/bundle", "run/burst/agent",
              "run/burst/nvidia", "tmp", "proc", "dev", "sys", "etc")
MOUNT_FILES = ("run/burst/shim.sock", "etc/passwd", "etc/group", "etc/resolv.conf")


def needs_rootfs(image: wire.ImageSpec | None) -> bool:
    """Whether the image needs a root filesystem of its own (else the fast path)."""
    if image is None:
        return False
    if image.base != "debian_slim" or image.python_version != "3.11":
        return True
    # (Files added at start are bound in as the container starts, on any view.)
    return any(s.kind not in FAST_STEPS and not s.mounted for s in image.steps)


def debian_mirror() -> str:
    """The first non-security Debian mirror URI of this machine's apt sources."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                if line.startswith("URIs:"):
                    for uri in line.split()[1:]:
                        if "security" not in uri:
                            return uri
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"] and len(parts) > 2:
                    uri = parts[2] if parts[1].startswith("[") else parts[1]
                    if "security" not in uri:
                        return uri
    return ""


_suites: dict[str, bool] = {}


def mirror_has(suite: str, timeout: float = 10.0) -> bool:
    """Whether the machine's Debian mirror serves ``suite`` (asked once per agent)."""
    if suite not in _suites:
        mirror = debian_mirror()
        ok = False
        if mirror and Path(f"/usr/share/debootstrap/scripts/{suite}").exists():
            try:
                url = f"{mirror.rstrip('/')}/dists/{suite}/InRelease"
                with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                            timeout=timeout) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
        _suites[suite] = ok
    return _suites[suite]


def _layer_units(image: wire.ImageSpec) -> list[tuple[str, wire.ImageStep, str]]:
    """The image's steps as layers: (label, step, command), one per shell command of a
    command-like step (``images.step_shell``, as the Docker runtime's RUN lines), else one
    per step with no command."""
    out: list[tuple[str, wire.ImageStep, str]] = []
    for step in image.steps:
        what = describe(step)
        if step.mounted:
            # Files added at start: only their mount point is a layer (an empty file or
            # directory), whatever their content (a changed file builds nothing).
            out.append((f"{what}: its mount point",
                        wire.ImageStep(kind=step.kind, path=step.path, mounted=True), ""))
            continue
        commands = images.step_shell(step)
        if commands is None:
            out.append((what, step, ""))
            continue
        for cmd in commands:
            label = f"{what}: {cmd!r}" if step.kind == "run_commands" and len(commands) > 1 \
                else what
            out.append((label, step, cmd))
    return out


def _key(parent: str, step: wire.ImageStep, cmd: str) -> str:
    h = hashlib.sha256(parent.encode() + b"\0" + msgspec.msgpack.encode(step) + b"\0"
                       + cmd.encode())
    return h.hexdigest()[:24]


@dataclass
class View:
    """A materialised image, ready to run containers in."""

    #: The read-only root (an overlayfs mount).
    root: Path
    env: dict[str, str]
    workdir: str
    python: str
    #: Burst's shim for the image's python (bound at ``SHIM_DIR``).
    shim: Path
    #: The layers and base it uses (touched on every use; kept from eviction while used).
    uses: list[Path] = field(default_factory=list)
    key: str = ""
    #: ``entrypoint([...])``: the command the shim runs under (as Docker's ENTRYPOINT).
    entrypoint: list[str] = field(default_factory=list)


class Store:
    """The agent machine's image root filesystems (see the module docstring)."""

    def __init__(self, root: Path, disk_budget_mb: int = 20_000,
                 docker_host: str | None = None, step_timeout: float = 1800.0,
                 network: Network | None = None) -> None:
        self.root = root
        #: The containers' network (NAT with deny rules): build steps get it too, so user
        #: commands never reach the host's loopback, the cluster or denied ranges. None or
        #: disabled: steps share the agent's network (apt and pip need one).
        self.network = network
        #: The agent's event loop (``network.attach`` runs there; builds run in threads).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.disk_budget_mb = disk_budget_mb
        self.docker_host = docker_host
        self.step_timeout = step_timeout
        #: Views (by key) in use by this agent's containers: never evicted.
        self.in_use: dict[str, int] = {}
        #: Views this process mounted (unmounted at exit).
        self._mounted: set[Path] = set()

    # ---- paths ---------------------------------------------------------------------
    @property
    def bases(self) -> Path:
        return self.root / "bases"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def mounts(self) -> Path:
        return self.root / "mnt"

    def _dirs(self) -> None:
        for d in (self.root, self.bases, self.layers, self.mounts, self.root / "shim",
                  self.root / "locks"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """A machine-wide lock (agents on one machine share the store)."""
        with open(self.root / "locks" / f"{name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- materialise ---------------------------------------------------------------
    def materialise(self, image: wire.ImageSpec, say: Callable[[str], None]) -> View:
        """The image's view, building what is missing (blocking: run it in a thread)."""
        if os.geteuid() != 0:
            raise ImageError(f"{_image_name(image)}: materialising an image on the process "
                             "runtime needs the agent to run as root (overlayfs, chroot)")
        self._dirs()
        t0 = time.monotonic()
        base = self._base(image, say)
        units = _layer_units(image)
        env = dict(DEFAULT_ENV)
        env.update(_image_config_env(base))
        workdir = "/"
        entrypoint: list[str] = []
        chain: list[Path] = [base / "fs"]  # lowest first
        parent = base.name
        if image.base == "registry" and image.add_python:
            parent = self._add_python(image, base, chain, env, say)
        if image.force_build:  # on the base: every step's key is new, so all are built again
            parent = f"{parent}-{image.force_build}"
        n = len(units)
        for i, (label, step, cmd) in enumerate(units, 1):
            key = _key(parent, step, cmd)
            layer = self.layers / key
            if step.kind == "env":
                env.update(step.env)
            t_step = time.monotonic()
            if (layer / "meta.json").exists():
                say(f"Step {i}/{n}: {label} (cached)")
            else:
                with self._lock(key):
                    if (layer / "meta.json").exists():
                        say(f"Step {i}/{n}: {label} (cached, built by another agent)")
                    else:
                        say(f"Step {i}/{n}: {label}")
                        self._build_layer(layer, chain, step, cmd, label, env, workdir, say)
                        say(f"Step {i}/{n} took {time.monotonic() - t_step:.1f} s")
            if step.kind == "workdir":
                workdir = step.path
            elif step.kind == "entrypoint":
                entrypoint = list(step.args)
            if any((layer / "fs").iterdir()):
                chain.append(layer / "fs")
            parent = key
        if PYTHON_SOURCE_DIR not in env.get("PYTHONPATH", ""):
            env["PYTHONPATH"] = ":".join(
                p for p in (env.get("PYTHONPATH", ""), PYTHON_SOURCE_DIR) if p)
        view_root = self._mount(parent, chain)
        python = _find_python(view_root)
        shim = self._shim(view_root, python, say)
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{SHIM_DIR}"
        uses = [base, *[p.parent for p in chain[1:]]]
        self.touch(uses)
        say(f"image ready in {time.monotonic() - t0:.1f} s")
        return View(root=view_root, env=env, workdir=workdir, python=python, shim=shim,
                    uses=uses, key=parent, entrypoint=entrypoint)

    def touch(self, paths: Iterable[Path]) -> None:
        now = time.time()
        for p in paths:
            with contextlib.suppress(OSError):
                os.utime(p / "meta.json", (now, now))

    # ---- bases ---------------------------------------------------------------------
    def _base(self, image: wire.ImageSpec, say: Callable[[str], None]) -> Path:
        if image.base == "registry":
            tag = image.registry_tag
            what = f"Image.from_registry({tag!r})"
            if image.add_python and image.add_python not in DEBIAN_PYTHON:
                raise ImageError(f"Image.from_registry({tag!r}, add_python="
                                 f"{image.add_python!r}): not available; available here: "
                                 f"{', '.join(self.available_versions())}")
            client = self._docker(what)
            if client is None:
                raise ImageError(f"{what}: no Docker engine answers on this agent to supply "
                                 "the image, and there is no registry to pull it from "
                                 "(build or load it into a local engine first)")
            return self._docker_base(client, tag, what, say)
        version = image.python_version
        if version not in DEBIAN_PYTHON:
            raise ImageError(f"Image.debian_slim(python_version={version!r}): not available; "
                             f"available here: {', '.join(self.available_versions())}")
        if version in DOCKER_BASES:
            client = self._docker("")
            if client is not None:
                with contextlib.suppress(ImageError):
                    return self._docker_base(client, DOCKER_BASES[version],
                                             f"the base image {DOCKER_BASES[version]}", say)
        suite = DEBIAN_PYTHON[version]
        if not mirror_has(suite):
            raise ImageError(f"Image.debian_slim(python_version={version!r}): the Debian "
                             f"mirror of this machine has no {suite}; available here: "
                             f"{', '.join(self.available_versions()) or 'none'}")
        return self._debootstrap(suite, say)

    def available_versions(self) -> list[str]:
        out = []
        for version, suite in DEBIAN_PYTHON.items():
            done = (self.bases / _debian_base(suite) / "meta.json").exists()
            if done or mirror_has(suite):
                out.append(version)
        return out

    def _docker(self, what: str) -> Any:
        """The local Docker engine's client, or None where none answers."""
        try:
            import docker

            client = (docker.DockerClient(base_url=self.docker_host) if self.docker_host
                      else docker.from_env())
            client.ping()
            return client
        except Exception:
            return None

    def _docker_base(self, client: Any, tag: str, what: str,
                     say: Callable[[str], None]) -> Path:
        import docker.errors

        try:
            img = client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise ImageError(f"{what}: {tag!r} is not on this agent's Docker engine and "
                             "there is no registry to pull it from") from None
        except docker.errors.APIError as e:
            raise ImageError(f"{what}: the Docker engine failed: {e}") from None
        base = self.bases / f"docker-{img.id.split(':')[-1][:16]}"
        if (base / "meta.json").exists():
            return base
        with self._lock(base.name):
            if (base / "meta.json").exists():
                return base
            say(f"exporting {tag} from the local Docker engine")
            t0 = time.monotonic()
            tmp = self._scratch(base)
            try:
                (tmp / "fs").mkdir()
                box = client.containers.create(tag, command=["true"])
                try:
                    tar = subprocess.Popen(["tar", "-x", "-C", str(tmp / "fs"),
                                            "--numeric-owner"], stdin=subprocess.PIPE)
                    assert tar.stdin is not None
                    for chunk in box.export():
                        tar.stdin.write(chunk)
                    tar.stdin.close()
                    if tar.wait() != 0:
                        raise ImageError(f"{what}: unpacking the exported image failed")
                finally:
                    box.remove(force=True)
                config = img.attrs.get("Config") or {}
                self._finish(tmp, base, {"label": tag, "kind": "base",
                                         "env": config.get("Env") or [],
                                         "workdir": config.get("WorkingDir") or ""})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            say(f"{tag} exported in {time.monotonic() - t0:.1f} s")
        return base

    def _debootstrap(self, suite: str, say: Callable[[str], None]) -> Path:
        base = self.bases / _debian_base(suite)
        if (base / "meta.json").exists():
            return base
        if shutil.which("debootstrap") is None:
            raise ImageError(f"the {suite} base: debootstrap is not installed on this agent "
                             "(apt-get install debootstrap)")
        with self._lock(base.name):
            if (base / "meta.json").exists():
                return base
            t0 = time.monotonic()
            say(f"debootstrap {suite} from the machine's Debian mirror (once per machine)")
            tmp = self._scratch(base)
            fs = tmp / "fs"
            try:
                _run(["debootstrap", "--variant=minbase",
                      "--include=python3,python3-pip,python3-venv,python-is-python3,"
                      "ca-certificates", suite, str(fs), debian_mirror()],
                     say, f"debootstrap {suite}", timeout=self.step_timeout)
                _copy_host_config(fs, suite)
                _run(self._chroot(fs, writable=True) + ["/bin/sh", "-c",
                     "update-ca-certificates >/dev/null 2>&1 || true; apt-get clean"],
                     say, f"the {suite} base", timeout=self.step_timeout)
                for p in fs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
                    p.unlink()
                for d in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
                    for p in (fs / d).glob("*"):
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p, ignore_errors=True)
                        else:
                            p.unlink(missing_ok=True)
                self._finish(tmp, base, {"label": f"debian {suite}", "kind": "base",
                                         "env": [], "workdir": ""})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            say(f"{suite} base made in {time.monotonic() - t0:.1f} s")
        return base

    def _add_python(self, image: wire.ImageSpec, base: Path, chain: list[Path],
                    env: dict[str, str], say: Callable[[str], None]) -> str:
        """``from_registry(tag, add_python=V)``: a layer with the Debian base of Python V
        under ``images.ADDED_PYTHON``, its interpreter started by the base's own loader and
        libraries (as the Docker runtime's ``images.add_python``), ``python3``/``python``
        in ``/usr/local/bin``. Returns the layer's key (``chain``, ``env`` updated)."""
        version = image.add_python
        what = f"add_python={version!r}"
        py_base = self._base(wire.ImageSpec(python_version=version), say)
        step = wire.ImageStep(kind="add_python", args=[version, py_base.name])
        key = _key(base.name, step, "")
        layer = self.layers / key
        with self._lock(key):
            if (layer / "meta.json").exists():
                say(f"{what}: the Python base {py_base.name} (cached)")
            else:
                t0 = time.monotonic()
                say(f"{what}: copying the Python base {py_base.name} into the image")
                tmp = self._scratch(layer)
                try:
                    root = tmp / "fs" / images.ADDED_PYTHON.lstrip("/")
                    root.parent.mkdir(parents=True)
                    for d in (tmp / "fs", *root.parents):
                        if str(d).startswith(str(tmp / "fs")):
                            os.chmod(d, 0o755)
                    done = subprocess.run(["cp", "-a", str(py_base / "fs"), str(root)],
                                          capture_output=True, text=True)
                    if done.returncode != 0:
                        raise ImageError(f"image build failed at {what}: {done.stderr[-500:]}")
                    lib = "/usr/lib/x86_64-linux-gnu"
                    real = f"/usr/bin/python{version}"
                    os.rename(root / real.lstrip("/"), root / f"{real.lstrip('/')}.real")
                    script = root / real.lstrip("/")
                    top = images.ADDED_PYTHON
                    script.write_text(
                        "#!/bin/sh\n"
                        f"exec {top}{lib}/ld-linux-x86-64.so.2 --library-path "
                        f'{top}{lib} --argv0 "$0" {top}{real}.real "$@"\n')
                    os.chmod(script, 0o755)
                    bin_dir = tmp / "fs" / "usr" / "local" / "bin"
                    bin_dir.mkdir(parents=True)
                    for name in ("python3", "python"):
                        os.symlink(f"{top}{real}", bin_dir / name)
                    self._finish(tmp, layer, {"label": what, "kind": "layer"})
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                say(f"{what}: done in {time.monotonic() - t0:.1f} s")
        chain.append(layer / "fs")
        certs = f"{images.ADDED_PYTHON}/etc/ssl/certs/ca-certificates.crt"
        env.update(SSL_CERT_FILE=certs, PIP_CERT=certs,
                   PATH=f"{env.get('PATH', DEFAULT_ENV['PATH'])}:"
                        f"{images.ADDED_PYTHON}/usr/local/bin")
        return key

    # ---- layers --------------------------------------------------------------------
    def _scratch(self, final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.building-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.mkdir(mode=0o755)
        return tmp

    def _finish(self, tmp: Path, final: Path, meta: dict[str, object]) -> None:
        """Mark ``tmp`` complete and move it into place (atomically: a rename)."""
        meta = {**meta, "created": time.time(), "bytes": _size(tmp)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:  # another agent (without our lock: a stale one) got there first
            if not (final / "meta.json").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)

    def _build_layer(self, layer: Path, chain: list[Path], step: wire.ImageStep, cmd: str,
                     label: str, env: dict[str, str], workdir: str,
                     say: Callable[[str], None]) -> None:
        tmp = self._scratch(layer)
        fs = tmp / "fs"
        fs.mkdir(mode=0o755)
        try:
            if step.mounted:  # the mount point of files added at start
                if step.kind == "add_local_file":
                    _write(fs, step.path, b"", label)
                else:  # a directory: made with its parents by a file below it, then empty
                    _write(fs, f"{step.path.rstrip('/')}/.mountpoint", b"", label)
                    (fs / PurePosixPath(step.path).relative_to("/") / ".mountpoint").unlink()
            elif step.kind in ("add_local_file", "add_local_dir", "add_local_python_source"):
                dest = step.path or PYTHON_SOURCE_DIR
                if step.kind == "add_local_file" and len(step.files) == 1:
                    name, data = next(iter(step.files.items()))
                    _write(fs, dest, data, label)
                else:
                    for rel, data in step.files.items():
                        _write(fs, f"{dest.rstrip('/')}/{rel}", data, label)
                say(f"{label}: {len(step.files)} files")
            elif step.kind in ("env", "entrypoint"):
                pass  # the image's configuration only (the shim is what a container runs)
            elif step.kind == "workdir":
                self._in_chroot(tmp, chain, f"mkdir -p {shlex.quote(step.path)}", env, "/",
                                label, say)
            elif cmd:
                for dest, data in images.step_files(step).items():
                    _write(fs, dest, data, label)
                self._in_chroot(tmp, chain, cmd, env, workdir, label, say)
            else:
                raise ImageError(f"image build failed at {label}: this agent's process "
                                 "runtime does not know this step (is it older than the SDK?)")
            self._finish(tmp, layer, {"label": label, "kind": "layer"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _in_chroot(self, tmp: Path, chain: list[Path], script: str, env: dict[str, str],
                   workdir: str, label: str, say: Callable[[str], None]) -> None:
        """Run ``script`` as root in the overlay of ``chain`` with ``tmp/fs`` as upper."""
        work, mnt = tmp / "work", tmp / "mnt"
        work.mkdir()
        mnt.mkdir()
        lowers = ":".join(self._rel(p) for p in reversed(chain))
        _mount_overlay(mnt, f"lowerdir={lowers},upperdir={tmp / 'fs'},workdir={work}", label,
                       cwd=self.root)
        try:
            net = self._attach if self._networked() else None
            argv = self._chroot(mnt, writable=True, cwd=workdir, env=env, networked=bool(net))
            if net is not None:
                assert self.network is not None
                # In a network namespace of its own, held behind a gate until its NAT and
                # deny rules are in place (as a container).
                argv = [*self.network.prefix(), *argv, "/bin/sh", "-c",
                        'read -r _ || exit 111; exec "$@" </dev/null', "sh"]
            _run(argv + ["/bin/sh", "-c", script], say, label, timeout=self.step_timeout,
                 net=net)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def _networked(self) -> bool:
        return self.network is not None and self.network.enabled and self.loop is not None

    def _attach(self, pid: int, proc: subprocess.Popen[str]) -> None:
        """Set up the network of a build step's namespace (from the builder's thread)."""
        assert self.network is not None and self.loop is not None
        future = asyncio.run_coroutine_threadsafe(
            self.network.attach(pid, cast(Any, _Waiter(proc))), self.loop)
        future.result(timeout=self.network.setup_timeout + 5)

    def _chroot(self, root: Path, *, writable: bool, cwd: str = "/",
                env: dict[str, str] | None = None, networked: bool = False) -> list[str]:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise ImageError("building an image on the process runtime needs bubblewrap "
                             "(apt-get install bubblewrap)")
        argv = [bwrap, "--bind" if writable else "--ro-bind", str(root), "/",
                "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
                "--cap-drop", "ALL", *(a for c in BUILD_CAPS for a in ("--cap-add", c)),
                "--clearenv"]
        if networked and self.network is not None:
            argv += ["--ro-bind", str(self.network.resolv_conf), "/etc/resolv.conf"]
        else:
            # The containers' network or none: never the host's (the cluster's servers,
            # the host's loopback).
            argv += ["--unshare-net"]
        for k, v in {**DEFAULT_ENV, **(env or {}), "HOME": "/root"}.items():
            argv += ["--setenv", k, v]
        argv += ["--chdir", cwd or "/", "--"]
        return argv

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    # ---- the view ------------------------------------------------------------------
    def _mountpoints(self) -> Path:
        """A layer with the mount points every container's sandbox binds onto."""
        mp = self.root / ("mountpoints-" + hashlib.sha256(
            repr((MOUNT_DIRS, MOUNT_FILES)).encode()).hexdigest()[:8])
        if not (mp / ".ready").exists():
            tmp = self._scratch(mp)
            for d in MOUNT_DIRS:
                (tmp / d).mkdir(parents=True, exist_ok=True)
            for f in MOUNT_FILES:
                (tmp / f).touch()
            for dirpath, _dirnames, _ in os.walk(tmp):
                os.chmod(dirpath, 0o755)
            os.chmod(tmp / "tmp", 0o1777)
            (tmp / ".ready").touch()
            try:
                os.rename(tmp, mp)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return mp

    def _mount(self, key: str, chain: list[Path]) -> Path:
        """The image's read-only view: its layers and the mount points, mounted once per
        agent process (``<key>.<pid>``: an agent unmounts only its own views, never one
        another agent of the machine is starting containers in)."""
        mnt = self.mounts / f"{key}.{os.getpid()}"
        if os.path.ismount(mnt):
            return mnt
        with self._lock(f"mnt-{key}"):
            if os.path.ismount(mnt):
                return mnt
            mnt.mkdir(exist_ok=True)
            mp = self._mountpoints()
            # Only the entries the image lacks come from the mount points layer, at the
            # bottom: the image's own /etc, /tmp... win.
            lowers = ":".join(self._rel(p) for p in [*reversed(chain), mp])
            _mount_overlay(mnt, f"lowerdir={lowers}", "the image's filesystem", cwd=self.root)
            if not self._mounted:
                atexit.register(self.unmount_mine)
            self._mounted.add(mnt)
        return mnt

    def unmount_mine(self) -> None:
        """At exit: unmount the views this agent mounted (no mount outlives the agents;
        running containers keep their own copy in their sandboxes, and another agent of
        the machine mounts a view again when it next needs it)."""
        for mnt in self._mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()
        self._mounted.clear()

    def _shim(self, view: Path, python: str, say: Callable[[str], None]) -> Path:
        """Burst's shim (burst, msgspec, cloudpickle) for the image's python."""
        import cloudpickle

        probe = subprocess.run(self._chroot(view, writable=False) + [
            python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60)
        version = probe.stdout.strip()
        if probe.returncode != 0 or not re.fullmatch(r"\d+\.\d+", version):
            raise ImageError(f"the image's python ({python}) does not run: "
                             f"{(probe.stdout + probe.stderr).strip()[-500:]}")
        dest = self.root / "shim" / f"py{version}-{_shim_hash()}"
        if (dest / ".ready").exists():
            return dest
        with self._lock(dest.name):
            if (dest / ".ready").exists():
                return dest
            say(f"Burst's shim for Python {version}")
            tmp = self._scratch(dest)
            try:
                import burst

                shutil.copytree(Path(burst.__file__).parent, tmp / "burst",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
                if version == mine:  # the agent's own compiled packages fit
                    for mod in (msgspec, cloudpickle):
                        shutil.copytree(Path(str(mod.__file__)).parent, tmp / mod.__name__,
                                        ignore=shutil.ignore_patterns("__pycache__"))
                    # Bytecode made ahead (by the agent's python: the same version), as the
                    # view is read-only and a container's interpreter starts from the
                    # image's python, not a fork: every start would compile Burst again.
                    import compileall

                    compileall.compile_dir(str(tmp), ddir=SHIM_DIR, quiet=1)
                else:
                    # The image's pip (its code): confined as a build step is (reduced
                    # capabilities, its own pid namespace, the containers' network).
                    net = self._attach if self._networked() else None
                    argv = self._chroot(view, writable=False, networked=bool(net))
                    cut = argv.index("--chdir")
                    argv[cut:cut] = ["--bind", str(tmp), SHIM_DIR]
                    if net is not None:
                        assert self.network is not None
                        argv = [*self.network.prefix(), *argv, "/bin/sh", "-c",
                                'read -r _ || exit 111; exec "$@" </dev/null', "sh"]
                    _run(argv + ["/bin/sh", "-c", '"$0" -m pip install -q --no-cache-dir '
                                 '--disable-pip-version-check --target "$1" "$2" "$3" && '
                                 '"$0" -m compileall -q "$1"', python, SHIM_DIR,
                                 f"msgspec=={msgspec.__version__}",
                                 f"cloudpickle=={cloudpickle.__version__}"],
                         say, f"Burst's shim for Python {version}", timeout=self.step_timeout,
                         net=net)
                for dirpath, _dirnames, filenames in os.walk(tmp):
                    os.chmod(dirpath, 0o755)
                    for f in filenames:
                        os.chmod(os.path.join(dirpath, f), 0o644)
                (tmp / ".ready").touch()
                os.rename(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ---- storage -------------------------------------------------------------------
    def entries(self) -> list[dict[str, object]]:
        """Every base and layer: name, kind, label, bytes, last used (seconds)."""
        out: list[dict[str, object]] = []
        for parent in (self.bases, self.layers):
            if not parent.is_dir():
                continue
            for d in parent.iterdir():
                meta_file = d / "meta.json"
                if d.name.startswith(".") or not meta_file.exists():
                    continue
                with contextlib.suppress(OSError, ValueError):
                    meta = json.loads(meta_file.read_text())
                    out.append({"name": d.name, "kind": meta.get("kind", "layer"),
                                "label": meta.get("label", ""),
                                "bytes": int(meta.get("bytes", 0)),
                                "last_used": meta_file.stat().st_mtime, "path": str(d)})
        return sorted(out, key=lambda e: float(e["last_used"]))  # type: ignore[arg-type]

    def used_paths(self, skip_ns: Iterable[str] = ()) -> set[str]:
        """Layers and bases that a mounted view uses: in the agent's mount namespace or in
        any other (a running container's sandbox keeps its image mounted there, even once
        the agent's own mount is gone); not counting the mount namespaces ``skip_ns``."""
        used: set[str] = set()
        seen: set[str] = set(skip_ns)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ns = os.readlink(proc / "ns" / "mnt")
                if ns in seen:
                    continue
                seen.add(ns)
                used |= self._paths_in(proc)
            except OSError:
                continue
        return used

    def _paths_in(self, proc: Path) -> set[str]:
        """The layers and bases mounted in ``proc``'s (``/proc/<pid>``) mount namespace."""
        used: set[str] = set()
        for m in re.finditer(r"lowerdir=([^,\s]+)", (proc / "mountinfo").read_text()):
            for p in m.group(1).split(":"):
                path = Path(p) if p.startswith("/") else self.root / p
                if str(path).startswith(str(self.root)):
                    used.add(str(path.parent) if path.name == "fs" else str(path))
        return used

    def remove(self, path: Path) -> None:
        """Remove one base or layer (renamed aside first: readers never see half)."""
        aside = path.with_name(f".{path.name}.removing-{uuid.uuid4().hex[:6]}")
        with contextlib.suppress(OSError):
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)

    def unmount_unused(self, keep: set[str]) -> None:
        """Unmount this agent's views no container of it uses (``keep``: keys in use), and
        views left by agents that are gone."""
        if not self.mounts.is_dir():
            return
        for mnt in self.mounts.iterdir():
            key, _, pid = mnt.name.partition(".")
            if pid == str(os.getpid()):
                if key in keep:
                    continue
            elif pid.isdigit() and _alive(int(pid)):
                continue  # another agent's
            if os.path.ismount(mnt):
                subprocess.run(["umount", str(mnt)], capture_output=True)
            self._mounted.discard(mnt)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def evict(self, spares: dict[str, list[int]] | None = None,
              close: Callable[[set[str]], None] | None = None) -> list[str]:
        """Remove least recently used bases and layers past the disk budget (none a
        mounted view uses). Returns the names removed. ``spares`` and ``close``: see
        :meth:`_remove_unused`."""
        entries = self.entries()
        total = sum(int(e["bytes"]) for e in entries)  # type: ignore[call-overload]
        budget = self.disk_budget_mb << 20
        if total <= budget:
            return []

        def pick(used: set[str]) -> list[dict[str, object]]:
            left, out = total, []
            for e in entries:
                if left <= budget:
                    break
                if e["path"] not in used:
                    out.append(e)
                    left -= int(e["bytes"])  # type: ignore[call-overload]
            return out

        removed = self._remove_unused(pick, True, spares or {}, close)
        if removed:
            log.info("images_evicted", removed=removed)
        return removed

    def prune(self, older_than_days: float = 0.0, unmount: bool = True,
              spares: dict[str, list[int]] | None = None,
              close: Callable[[set[str]], None] | None = None) -> list[str]:
        """Remove bases and layers unused for ``older_than_days`` that no mounted view uses
        (``unmount``: first unmount the views this agent's containers do not use).
        ``spares`` and ``close``: see :meth:`_remove_unused`."""
        if older_than_days < 0:
            raise ValueError(f"older than {older_than_days!r} days: use a number >= 0")
        cutoff = time.time() - older_than_days * 86400

        def pick(used: set[str]) -> list[dict[str, object]]:
            return [e for e in self.entries()
                    if float(e["last_used"]) <= cutoff  # type: ignore[arg-type]
                    and e["path"] not in used]

        return self._remove_unused(pick, unmount, spares or {}, close)

    def _remove_unused(self, pick: Callable[[set[str]], list[dict[str, object]]],
                       unmount: bool, spares: dict[str, list[int]],
                       close: Callable[[set[str]], None] | None) -> list[str]:
        """Remove what ``pick`` chooses given the paths in use. ``spares``: this agent's
        spare sandboxes of images no container runs (image key: a pid inside each),
        which do not keep their layers: ``close`` is given the keys of those whose layers
        go, and returns once they are gone; then what is still used by anything else (a
        container, another agent) stays."""
        if unmount:
            self.unmount_unused(set(self.in_use))
        spare_ns: dict[str, dict[str, int]] = {}  # key: {mount namespace: a pid in it}
        own = os.readlink("/proc/self/ns/mnt")
        for key, pids in spares.items():
            for pid in pids:
                with contextlib.suppress(OSError):
                    ns = os.readlink(f"/proc/{pid}/ns/mnt")
                    if ns != own:  # (never the agent's own)
                        spare_ns.setdefault(key, {})[ns] = pid
        skip = {ns for m in spare_ns.values() for ns in m}
        used = self.used_paths(skip_ns=skip) if skip else self.used_paths()
        chosen = pick(used)
        paths = {str(e["path"]) for e in chosen}
        doomed: set[str] = set()
        for key, found in spare_ns.items():
            for pid in found.values():
                with contextlib.suppress(OSError):
                    if self._paths_in(Path(f"/proc/{pid}")) & paths:
                        doomed.add(key)
        if doomed and close is not None:
            close(doomed)  # spares of images about to go: closed before their layers
            used = self.used_paths()
        elif doomed:
            used = self.used_paths()
        removed: list[str] = []
        for e in chosen:
            if e["path"] in used:
                continue
            self.remove(Path(str(e["path"])))
            removed.append(str(e["name"]))
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bwrap_or_fail() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ImageError("building an image on the process runtime needs bubblewrap "
                         "(apt-get install bubblewrap)")
    return bwrap


_SHIM_HASH = ""


def _shim_hash() -> str:
    """A hash of Burst's package and the shim's dependencies' versions (once per agent)."""
    global _SHIM_HASH
    if not _SHIM_HASH:
        import cloudpickle

        import burst

        root = Path(burst.__file__).parent
        # ("compiled": shims are bytecode-compiled, see ``Store._shim``)
        h = hashlib.sha256(f"{msgspec.__version__} {cloudpickle.__version__} compiled"
                           .encode())
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
        _SHIM_HASH = h.hexdigest()[:16]
    return _SHIM_HASH


def _image_name(image: wire.ImageSpec) -> str:
    return (f"Image.from_registry({image.registry_tag!r})" if image.base == "registry"
            else f"Image.debian_slim(python_version={image.python_version!r})")


def _image_config_env(base: Path) -> dict[str, str]:
    """The environment a Docker-exported base declared (``ENV`` of its image)."""
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((base / "meta.json").read_text())
        return dict(e.split("=", 1) for e in meta.get("env") or [] if "=" in e)
    return {}


def _find_python(root: Path) -> str:
    for p in ("usr/local/bin/python3", "usr/bin/python3", "usr/local/bin/python",
              "usr/bin/python"):
        if os.path.lexists(root / p):
            return "/" + p
    raise ImageError("the image has no python3 (in /usr/local/bin or /usr/bin): a function "
                     "needs one (use a Python image or apt_install python3)")


def _write(fs: Path, dest: str, data: bytes, label: str) -> None:
    rel = PurePosixPath(dest).relative_to("/")
    if ".." in rel.parts:
        raise ImageError(f"image build failed at {label}: invalid path {dest!r}")
    p = fs / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    for parent in [p.parent, *p.parent.parents]:
        if parent == fs or not str(parent).startswith(str(fs)):
            break
        os.chmod(parent, 0o755)
    p.write_bytes(data)
    os.chmod(p, 0o644)


def _debian_base(suite: str) -> str:
    """A debootstrapped base's name in the store. ``-2``: its apt sources name its own
    release; older ones (the machine's sources) are left to eviction and ``prune``."""
    return f"debian-{suite}-2"


def host_codename() -> str:
    """This machine's Debian release (``VERSION_CODENAME`` of ``/etc/os-release``)."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def _served(uri: str, suite: str, timeout: float = 10.0) -> bool:
    """Whether the apt repository at ``uri`` serves ``suite``."""
    try:
        url = f"{uri.rstrip('/')}/dists/{suite}/InRelease"
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def apt_sources_for(text: str, host: str, suite: str, deb822: bool) -> str:
    """The machine's apt sources ``text`` (of release ``host``) for a root filesystem of
    release ``suite``: each ``host[-x]`` suite becomes ``suite[-x]``, kept where its
    repository serves it (a mirror may carry a release without its updates or security
    suites); a source left with no suite is dropped. Without this a trixie image's
    ``apt_install`` would install bookworm's packages."""
    if not host or host == suite:
        return text

    def swap(uri: str, suites: list[str]) -> list[str]:
        out = []
        for name in suites:
            if name == host or name.startswith(host + "-"):
                name = suite + name[len(host):]
                if not _served(uri, name):
                    continue
            out.append(name)
        return out

    if deb822:
        stanzas = []
        for stanza in re.split(r"\n\s*\n", text):
            lines = stanza.splitlines()
            uris = [ln.split()[1:] for ln in lines if ln.startswith("URIs:")]
            uri = uris[0][0] if uris and uris[0] else ""
            for i, ln in enumerate(lines):
                if ln.startswith("Suites:"):
                    kept = swap(uri, ln.split()[1:])
                    lines[i] = "Suites: " + " ".join(kept) if kept else ""
            if any(ln.startswith("Suites:") for ln in lines):
                stanzas.append("\n".join(lines))
        return "\n\n".join(stanzas) + "\n"
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] in (["deb"], ["deb-src"]) and len(parts) > 2:
            at = 2 if parts[1].startswith("[") else 1
            if len(parts) > at + 1:
                kept = swap(parts[at], [parts[at + 1]])
                if not kept:
                    continue
                parts[at + 1] = kept[0]
                line = " ".join(parts)
        out.append(line)
    return "\n".join(out) + "\n"


def _copy_host_config(fs: Path, suite: str = "") -> None:
    """The machine's apt sources (for ``suite``'s release), extra CA certificates and pip
    configuration."""
    host = host_codename() if suite else ""
    with contextlib.suppress(OSError):
        (fs / "etc/apt/sources.list").unlink(missing_ok=True)
        for f in Path("/etc/apt/sources.list.d").glob("*.sources"):
            (fs / "etc/apt/sources.list.d" / f.name).write_text(
                apt_sources_for(f.read_text(), host, suite, deb822=True))
        lists = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
        for f in lists:
            if f.is_file():
                (fs / str(f).lstrip("/")).write_text(
                    apt_sources_for(f.read_text(), host, suite, deb822=False))
    extra = Path("/usr/local/share/ca-certificates")
    if extra.is_dir():
        shutil.copytree(extra, fs / "usr/local/share/ca-certificates", dirs_exist_ok=True)
    if Path("/etc/pip.conf").is_file():
        shutil.copy2("/etc/pip.conf", fs / "etc/pip.conf")


def _mount_overlay(mnt: Path, options: str, what: str, cwd: Path | None = None) -> None:
    """Mount an overlay; with ``cwd``, its paths may be relative to it (the kernel reads at
    most a page of options: relative layer paths allow images of many more steps)."""
    done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)],
                          capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise ImageError(f"{what}: cannot mount overlayfs ({done.stderr.strip()[:300]})")


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


class _Waiter:
    """``Network.attach`` waits on the sandbox's process to stop its NAT: a thread's Popen."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    async def wait(self) -> int:
        return await asyncio.to_thread(self.proc.wait)


def _run(argv: list[str], say: Callable[[str], None], what: str, timeout: float,
         net: Callable[[int, subprocess.Popen[str]], None] | None = None) -> None:
    """Run one build step, its output line by line to ``say``; an ImageError naming the
    step with its last lines when it fails. With ``net``, the step waits on its stdin (a
    gate in ``argv``) until ``net`` has set up its network namespace."""
    tail: deque[str] = deque(maxlen=ERROR_TAIL)
    gate_r, gate_w = os.pipe() if net is not None else (-1, -1)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=gate_r if net is not None else subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
    except BaseException:
        for fd in (gate_r, gate_w):
            if fd >= 0:
                os.close(fd)
        raise
    if net is not None:
        os.close(gate_r)
        try:
            net(proc.pid, proc)
            os.write(gate_w, b"go\n")
        except Exception as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise ImageError(f"image build failed at {what}: its network could not be set "
                             f"up ({e})") from None
        finally:
            os.close(gate_w)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    # The deadline is checked per line; a step silent past it is killed by the timer.
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                say(line)
        code = proc.wait()
    finally:
        timer.cancel()
    if code != 0:
        last = tail[-1] if tail else ""
        why = f"timed out after {timeout:g} s" if time.monotonic() > deadline else \
            f"exit code {code}"
        raise ImageError(f"image build failed at {what}: {why}"
                         + (f": {last}" if last else "") + "\n" + "\n".join(tail))
