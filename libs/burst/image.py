"""Container images, declared in code and built on the agents.

An :class:`Image` is an immutable list of build steps on a base; every method returns a new
image. Its content hash names it on every agent, which builds it once and caches it. The
spec travels inside the deployment (``FunctionSpec.image``), files of ``add_local_*`` steps
included, so agents need nothing from the client's machine.

Example::

    image = (burst.Image.debian_slim(python_version="3.11")
             .apt_install("curl")
             .pip_install("six==1.16.0")
             .env({"MODE": "prod"})
             .add_local_python_source("mylib"))

    @app.function(image=image)
    def f() -> str: ...

On the Docker runtime every step is a Dockerfile instruction. On the process runtime the
agent materialises the image as a root filesystem, one cached layer per step (only
``pip_install``/``env``/``add_local_python_source`` on the default Python keep the agent's
own interpreter, with a cached virtual environment). Light on purpose: ``import burst``
loads this module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import msgspec

from burst import _unsupported, wire
from burst.exception import InvalidError

#: Python versions a ``debian_slim`` base exists for (Debian bookworm's and trixie's, built
#: on the machine from its Debian mirror; the agent says when its mirror lacks one).
PYTHON_VERSIONS = ("3.11", "3.13")
#: Where ``add_local_python_source`` puts modules in the image (on ``PYTHONPATH``).
PYTHON_SOURCE_DIR = "/opt/burst/python"
#: Files of ``add_local_*`` steps travel in the deployment, which NATS carries: keep them
#: small (larger trees belong in a Volume).
MAX_LOCAL_BYTES = 512 << 10
#: Modal's ``Image`` methods Burst has not built: using one names it (not AttributeError).
MODAL_ONLY = frozenset({
    "from_dockerfile", "from_aws_ecr", "from_gcp_artifact_registry", "from_scratch",
    "from_name", "from_id", "micromamba", "micromamba_install", "run_function", "uv_sync",
    "poetry_install_from_file", "pip_install_from_requirements", "pip_install_from_pyproject",
    "pip_install_private_repos", "dockerfile_commands", "entrypoint", "shell", "cmd",
    "imports", "pipe", "build", "publish", "copy_local_file", "copy_local_dir",
})
#: Options of Modal's ``pip_install``/``uv_pip_install`` Burst has not built (their
#: defaults are accepted: they ask for nothing).
_PIP_OPTIONS = frozenset({
    "requirements", "find_links", "index_url", "extra_index_url", "pre", "extra_options",
    "force_build", "uv_version", "secrets", "gpu", "env",
})
_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _strings(kind: str, values: Iterable[object]) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out += _strings(kind, v)
        elif isinstance(v, str) and v.strip():
            out.append(v.strip())
        else:
            raise InvalidError(f"Image.{kind}: expected non-empty strings, got {v!r}")
    return out


def _in_container() -> bool:
    """Inside a container the app's module is imported again, images included, but the
    image is already built: local files need not (and may not) exist there."""
    return bool(os.environ.get("BURST_SHIM_SOCKET"))


def describe(step: wire.ImageStep) -> str:
    """A step as the user wrote it, for error messages: ``pip_install('six==1.16.0')``."""
    if step.kind == "env":
        return f"env({step.env!r})"
    if step.kind == "workdir":
        return f"workdir({step.path!r})"
    if step.kind.startswith("add_local"):
        return f"{step.kind}({', '.join(repr(a) for a in [*step.args, step.path] if a)})"
    return f"{step.kind}({', '.join(repr(a) for a in step.args)})"


class _ImageType(type):
    def __getattr__(cls, name: str) -> object:
        if name in MODAL_ONLY:
            raise _unsupported.refuse(f"Image.{name}")
        raise AttributeError(f"type object 'Image' has no attribute {name!r}")


class Image(metaclass=_ImageType):
    """A container image: a base plus build steps. Build one with :meth:`debian_slim` or
    :meth:`from_registry`, then chain steps."""

    def __getattr__(self, name: str) -> object:
        if name in MODAL_ONLY:
            raise _unsupported.refuse(f"Image.{name}")
        raise AttributeError(f"'Image' object has no attribute {name!r}")

    def __init__(self, spec: wire.ImageSpec) -> None:
        self._spec = spec

    # ---- bases ---------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None) -> Image:
        """Debian with Python: bookworm's 3.11 (the default) or trixie's 3.13."""
        version = python_version or "3.11"
        if version not in PYTHON_VERSIONS:
            raise InvalidError(f"Image.debian_slim: python_version={version!r} is not available; "
                               f"use one of {', '.join(PYTHON_VERSIONS)}")
        return Image(wire.ImageSpec(base="debian_slim", python_version=version))._hashed()

    @staticmethod
    def from_registry(tag: str) -> Image:
        """An existing image by tag. With no registry reachable it must already be present
        on the agent's Docker engine; it needs ``python`` with ``pip`` on its ``PATH``."""
        if not isinstance(tag, str) or not tag.strip() or any(c.isspace() for c in tag):
            raise InvalidError(f"Image.from_registry: invalid image tag {tag!r}")
        return Image(wire.ImageSpec(base="registry", registry_tag=tag.strip()))._hashed()

    # ---- steps ---------------------------------------------------------------------
    def pip_install(self, *packages: str | list[str], **options: object) -> Image:
        """``pip install`` these requirement specifiers (from the machine's package index).
        Modal's other options are refused by name unless left at their defaults."""
        _unsupported.check_options("Image.pip_install()", options, _PIP_OPTIONS,
                                   ["the packages"])
        pkgs = _strings("pip_install", packages)
        return self._step(wire.ImageStep(kind="pip_install", args=pkgs)) if pkgs else self

    def uv_pip_install(self, *packages: str | list[str], **options: object) -> Image:
        """Modal's ``uv`` flavour of :meth:`pip_install`: the same packages, installed the
        same way (pip, from the machine's package index)."""
        _unsupported.check_options("Image.uv_pip_install()", options, _PIP_OPTIONS,
                                   ["the packages"])
        return self.pip_install(*packages)

    def apt_install(self, *packages: str | list[str]) -> Image:
        """``apt-get install`` these Debian packages."""
        pkgs = _strings("apt_install", packages)
        return self._step(wire.ImageStep(kind="apt_install", args=pkgs)) if pkgs else self

    def run_commands(self, *commands: str | list[str]) -> Image:
        """Shell commands, each its own layer, as root."""
        cmds = _strings("run_commands", commands)
        return self._step(wire.ImageStep(kind="run_commands", args=cmds)) if cmds else self

    def env(self, vars: Mapping[str, str]) -> Image:
        """Environment variables for the build steps that follow and for the container."""
        if not isinstance(vars, Mapping):
            raise InvalidError(f"Image.env: expected a dict of strings, got {vars!r}")
        for k, v in vars.items():
            if not isinstance(k, str) or not k or "=" in k or not isinstance(v, str):
                raise InvalidError(f"Image.env: invalid variable {k!r}={v!r} (names and "
                                   "values are strings, names without '=')")
        return self._step(wire.ImageStep(kind="env", env=dict(vars)))

    def workdir(self, path: str) -> Image:
        """The working directory of later steps and of the container (an absolute path)."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidError(f"Image.workdir: expected an absolute path, got {path!r}")
        return self._step(wire.ImageStep(kind="workdir", path=path))

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy one file from this machine to ``remote_path`` (absolute) in the image."""
        src = Path(local_path)
        dest = _absolute("add_local_file", remote_path)
        if _in_container():
            return self._step(wire.ImageStep(kind="add_local_file", args=[str(src)], path=dest))
        if not src.is_file():
            raise InvalidError(f"Image.add_local_file: {str(src)!r} is not a file")
        return self._step(wire.ImageStep(kind="add_local_file", args=[str(src)], path=dest,
                                          files={src.name: src.read_bytes()}))

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a directory tree from this machine to ``remote_path`` (absolute)."""
        src = Path(local_path)
        dest = _absolute("add_local_dir", remote_path)
        if _in_container():
            return self._step(wire.ImageStep(kind="add_local_dir", args=[str(src)], path=dest))
        if not src.is_dir():
            raise InvalidError(f"Image.add_local_dir: {str(src)!r} is not a directory")
        return self._step(wire.ImageStep(kind="add_local_dir", args=[str(src)], path=dest,
                                          files=_tree(src)))

    def add_local_python_source(self, *modules: str) -> Image:
        """Make local Python modules or packages importable in the container, by name."""
        img = self
        for name in _strings("add_local_python_source", modules):
            if "." in name:
                raise InvalidError(f"Image.add_local_python_source: {name!r}: give top-level "
                                   "module or package names")
            if _in_container():
                img = img._step(wire.ImageStep(kind="add_local_python_source", args=[name]))
                continue
            found = importlib.util.find_spec(name)
            if found is None or not found.origin or found.origin in ("built-in", "frozen"):
                raise InvalidError(f"Image.add_local_python_source: no local source for "
                                   f"module {name!r}")
            origin = Path(found.origin)
            if found.submodule_search_locations:  # a package: its whole directory
                files = _tree(origin.parent)
                dest = f"{PYTHON_SOURCE_DIR}/{name}"
            else:
                files = {origin.name: origin.read_bytes()}
                dest = PYTHON_SOURCE_DIR
            img = img._step(wire.ImageStep(kind="add_local_python_source", args=[name],
                                            path=dest, files=files))
        return img

    # ---- internals -----------------------------------------------------------------
    @property
    def spec(self) -> wire.ImageSpec:
        return self._spec

    @property
    def content_hash(self) -> str:
        return self._spec.content_hash

    def _step(self, step: wire.ImageStep) -> Image:
        spec = msgspec.structs.replace(self._spec, steps=[*self._spec.steps, step])
        size = sum(len(b) for s in spec.steps for b in s.files.values())
        if size > MAX_LOCAL_BYTES:
            raise InvalidError(f"Image.{step.kind}: local files total {size} bytes, above the "
                               f"{MAX_LOCAL_BYTES} bytes an image may carry; use a Volume")
        return Image(spec)._hashed()

    def _hashed(self) -> Image:
        body = msgspec.msgpack.encode(msgspec.structs.replace(self._spec, content_hash=""))
        self._spec = msgspec.structs.replace(
            self._spec, content_hash=hashlib.sha256(body).hexdigest()[:32])
        return self

    def __repr__(self) -> str:
        base = (f"from_registry({self._spec.registry_tag!r})" if self._spec.base == "registry"
                else f"debian_slim({self._spec.python_version!r})")
        steps = "".join(f".{describe(s)}" for s in self._spec.steps)
        return f"Image.{base}{steps}"


def _absolute(kind: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidError(f"Image.{kind}: remote_path must be absolute, got {path!r}")
    return str(PurePosixPath(path))


def _tree(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fname in sorted(filenames):
            if fname.endswith(".pyc"):
                continue
            p = Path(dirpath) / fname
            if p.is_file():
                files[p.relative_to(root).as_posix()] = p.read_bytes()
    return files
