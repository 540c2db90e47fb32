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

On the Docker runtime every step is a Dockerfile instruction; on the process runtime the
agent materialises the image as a root filesystem, one cached layer per step (only
``pip_install``/``env``/``add_local_python_source`` on the default Python keep the agent's
own interpreter, with a cached virtual environment). ``images.step_shell`` on the agent
says what each command-like step runs, on both. Every step method takes
``force_build=True`` (or set ``BURST_FORCE_BUILD=1``): that step and the ones after it are
built again. Light on purpose: ``import burst`` loads this module.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import hashlib
import importlib.util
import os
import re
import shlex
import sys
import tomllib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from burst import _dockerfile, _unsupported, wire
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
    "from_aws_ecr", "from_gcp_artifact_registry", "from_scratch",
    "from_name", "from_id", "micromamba", "micromamba_install", "uv_sync",
    "poetry_install_from_file", "pip_install_private_repos", "dockerfile_commands", "shell",
    "cmd", "pipe", "build", "publish", "copy_local_file", "copy_local_dir",
})
#: Options of Modal's image steps Burst has not built (their defaults are accepted: they
#: ask for nothing).
_LATER_OPTIONS = frozenset({"secrets", "gpu", "uv_version", "secret", "volumes",
                            "network_file_systems", "cloud", "region", "include_source",
                            "setup_dockerfile_commands", "build_args", "context_mount",
                            "ignore"})
#: Python versions the machine's base image can give a ``from_registry`` image.
ADD_PYTHON_VERSIONS = ("3.11",)
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


def _force(force_build: object, where: str) -> str:
    """``force_build``: a value new at every definition (so nothing cached matches)."""
    if not isinstance(force_build, bool):
        raise InvalidError(f"{where}: force_build= takes True or False, got {force_build!r}")
    if force_build or os.environ.get("BURST_FORCE_BUILD", "") not in ("", "0"):
        return os.urandom(8).hex()
    return ""


def _opt_str(where: str, name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value.strip()):
        return value.strip()
    raise InvalidError(f"{where}: {name}= takes a URL or path (a string without spaces), "
                       f"got {value!r}")


def _pip_fields(where: str, find_links: object, index_url: object, extra_index_url: object,
                pre: object, extra_options: object, env: object,
                later: Mapping[str, object]) -> dict[str, Any]:
    """The checked options of a pip/uv step, as :class:`wire.ImageStep` fields."""
    _unsupported.check_options(where, dict(later), _LATER_OPTIONS,
                               ["find_links", "index_url", "extra_index_url", "pre",
                                "extra_options", "force_build", "env"])
    if not isinstance(pre, bool):
        raise InvalidError(f"{where}: pre= takes True or False, got {pre!r}")
    if not isinstance(extra_options, str):
        raise InvalidError(f"{where}: extra_options= takes a string of pip options, got "
                           f"{extra_options!r}")
    try:
        shlex.split(extra_options)
    except ValueError as e:
        raise InvalidError(f"{where}: extra_options={extra_options!r} does not parse: "
                           f"{e}") from None
    return dict(find_links=_opt_str(where, "find_links", find_links),
                index_url=_opt_str(where, "index_url", index_url),
                extra_index_url=_opt_str(where, "extra_index_url", extra_index_url),
                pre=pre, extra_options=extra_options.strip(),
                env=_env_vars(f"{where}: env=", env or {}))


def _env_vars(where: str, vars: object) -> dict[str, str]:
    if not isinstance(vars, Mapping):
        raise InvalidError(f"{where}: expected a dict of strings, got {vars!r}")
    for k, v in vars.items():
        if not isinstance(k, str) or not k or "=" in k or not isinstance(v, str):
            raise InvalidError(f"{where}: invalid variable {k!r}={v!r} (names and "
                               "values are strings, names without '=')")
    return dict(vars)


def _ident(step: wire.ImageStep) -> bytes:
    """What names a step the same in the client and in the container, where local files
    are not read: no file contents, no force_build value, no pickled function."""
    plain = msgspec.structs.replace(
        step, files={}, payload=b"", force_build="",
        args=[] if step.source and step.kind != "run_function" else step.args,
        path="" if step.kind == "add_local_python_source" else step.path)
    return msgspec.msgpack.encode(plain)


class _ImportRecorder:
    """Notes the top-level modules the ``import`` statements of an ``imports()`` block name
    (already imported ones too), by wrapping ``__import__`` for the block."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._real = builtins.__import__

    def __call__(self, name: str, globals: Mapping[str, object] | None = None,
                 locals: Mapping[str, object] | None = None,
                 fromlist: Sequence[str] | None = (), level: int = 0) -> Any:
        top = name.partition(".")[0]
        if level == 0 and top and top not in self.names:
            self.names.append(top)
        return self._real(name, globals, locals, fromlist, level)

    def __enter__(self) -> _ImportRecorder:
        builtins.__import__ = self
        return self

    def __exit__(self, *exc: object) -> None:
        if builtins.__import__ is self:
            builtins.__import__ = self._real


def describe(step: wire.ImageStep) -> str:
    """A step as the user wrote it, for error messages: ``pip_install('six==1.16.0')``."""
    if step.source:
        return f"{step.kind}({step.source!r})"
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
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian with Python: bookworm's 3.11 (the default) or trixie's 3.13."""
        version = python_version or "3.11"
        if version not in PYTHON_VERSIONS:
            raise InvalidError(f"Image.debian_slim: python_version={version!r} is not available; "
                               f"use one of {', '.join(PYTHON_VERSIONS)}")
        force = _force(force_build, "Image.debian_slim")
        return Image(wire.ImageSpec(base="debian_slim", python_version=version,
                                    force_build=force))._hashed()

    @staticmethod
    def from_registry(tag: str, *, add_python: str | None = None, force_build: bool = False,
                      **options: object) -> Image:
        """An existing image by tag. With no registry reachable it must already be present
        on the agent's Docker engine. It needs ``python3`` with ``pip`` on its ``PATH``, or
        ``add_python="3.11"``: the machine's base image's Python is copied into it."""
        _unsupported.check_options("Image.from_registry()", options, _LATER_OPTIONS,
                                   ["tag", "add_python", "force_build"])
        if not isinstance(tag, str) or not tag.strip() or any(c.isspace() for c in tag):
            raise InvalidError(f"Image.from_registry: invalid image tag {tag!r}")
        if add_python is not None and add_python not in ADD_PYTHON_VERSIONS:
            raise InvalidError(f"Image.from_registry: add_python={add_python!r} is not "
                               f"available; use one of {', '.join(ADD_PYTHON_VERSIONS)}")
        force = _force(force_build, "Image.from_registry")
        return Image(wire.ImageSpec(base="registry", registry_tag=tag.strip(),
                                    add_python=add_python or "", force_build=force))._hashed()

    @staticmethod
    def from_dockerfile(path: str | os.PathLike[str], *,
                        context_dir: str | os.PathLike[str] | None = None,
                        force_build: bool = False, add_python: str | None = None,
                        **options: object) -> Image:
        """An image from a Dockerfile, read now into steps: ``FROM`` a base on the machine
        (``python:3.11-slim`` and ``burst-base:py311`` are ``debian_slim("3.11")``, any other
        tag is ``from_registry``), ``RUN``, ``COPY``/``ADD`` of files of the build context
        (``context_dir``, else the Dockerfile's directory), ``ENV``, ``WORKDIR`` and
        ``ENTRYPOINT``. Any other instruction is an error naming it and its line."""
        _unsupported.check_options("Image.from_dockerfile()", options, _LATER_OPTIONS,
                                   ["path", "context_dir", "force_build", "add_python"])
        src = Path(path)
        force = _force(force_build, "Image.from_dockerfile")
        ident = hashlib.sha256(f"from_dockerfile\0{src}\0{context_dir}".encode()).hexdigest()
        if _in_container():  # built already; only the identity matters here
            return Image(wire.ImageSpec(base="debian_slim", ident=ident[:32]))._hashed()
        if not src.is_file():
            raise InvalidError(f"Image.from_dockerfile: {str(src)!r} is not a file")
        try:
            text = src.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidError(f"Image.from_dockerfile: cannot read {str(src)!r}: {e}") from None
        context = Path(context_dir) if context_dir is not None else src.parent
        parsed = _dockerfile.parse(text, str(src), context)
        base = parsed.base
        version = _BASE_ALIASES.get(base)
        img = (Image.debian_slim(version, force_build=force_build) if version
               else Image.from_registry(base, add_python=add_python, force_build=force_build))
        for i, op in enumerate(parsed.ops):
            fb = force_build if i == 0 else False
            if op.kind == "run_commands":
                img = img.run_commands(*op.args, force_build=fb)
            elif op.kind == "entrypoint":
                img = img.entrypoint(op.args)
            elif op.kind == "workdir":
                img = img.workdir(op.path)
            elif op.kind == "env":
                img = img.env(op.env)
            elif op.kind == "add_local_file":
                assert op.local is not None
                img = img.add_local_file(op.local, op.path, copy=True)
            else:
                assert op.local is not None
                img = img.add_local_dir(op.local, op.path, copy=True)
        if force and img._spec.steps:
            first = msgspec.structs.replace(img._spec.steps[0], force_build=force)
            img._spec = msgspec.structs.replace(img._spec, steps=[first, *img._spec.steps[1:]])
        img._spec = msgspec.structs.replace(img._spec, ident=ident[:32])
        return img._hashed()

    # ---- steps ---------------------------------------------------------------------
    def pip_install(self, *packages: str | list[str], find_links: str | None = None,
                    index_url: str | None = None, extra_index_url: str | None = None,
                    pre: bool = False, extra_options: str = "", force_build: bool = False,
                    env: dict[str, str] | None = None, **options: object) -> Image:
        """``pip install`` these requirement specifiers (from the machine's package index,
        or ``index_url=``/``extra_index_url=``/``find_links=``; ``pre=True`` allows
        pre-releases; ``extra_options`` are more pip options; ``env`` is the step's
        environment)."""
        where = "Image.pip_install()"
        fields = _pip_fields(where, find_links, index_url, extra_index_url, pre,
                             extra_options, env, options)
        pkgs = _strings("pip_install", packages)
        if not pkgs:
            return self
        return self._step(wire.ImageStep(kind="pip_install", args=pkgs,
                                         force_build=_force(force_build, where), **fields))

    def uv_pip_install(self, *packages: str | list[str],
                       requirements: list[str] | None = None, find_links: str | None = None,
                       index_url: str | None = None, extra_index_url: str | None = None,
                       pre: bool = False, extra_options: str = "", force_build: bool = False,
                       env: dict[str, str] | None = None, **options: object) -> Image:
        """Install these packages with uv (itself installed from the package index into the
        image), given the machine's pip index, find-links, constraints and certificates as
        uv's own settings. ``requirements=`` names local requirements files."""
        where = "Image.uv_pip_install()"
        fields = _pip_fields(where, find_links, index_url, extra_index_url, pre,
                             extra_options, env, options)
        pkgs = _strings("uv_pip_install", packages)
        source = ""
        if requirements is not None:
            if isinstance(requirements, (str, os.PathLike)) or not isinstance(
                    requirements, (list, tuple)):
                raise InvalidError(f"{where}: requirements= takes a list of file paths, got "
                                   f"{requirements!r}")
            source = ", ".join(str(r) for r in requirements)
            for r in requirements:
                more, opts = _read_requirements(where, Path(r))
                pkgs += more
                for k, v in opts.items():
                    fields[k] = fields[k] or v
        if not pkgs and not source:
            return self
        return self._step(wire.ImageStep(kind="uv_pip_install", args=pkgs, source=source,
                                         force_build=_force(force_build, where), **fields))

    def pip_install_from_requirements(self, requirements_txt: str | os.PathLike[str],
                                      find_links: str | None = None, *,
                                      index_url: str | None = None,
                                      extra_index_url: str | None = None, pre: bool = False,
                                      extra_options: str = "", force_build: bool = False,
                                      env: dict[str, str] | None = None,
                                      **options: object) -> Image:
        """``pip install`` what a local requirements file lists (read now: ``-r`` includes,
        index and find-links options and ``--pre`` in it are honoured)."""
        where = "Image.pip_install_from_requirements()"
        fields = _pip_fields(where, find_links, index_url, extra_index_url, pre,
                             extra_options, env, options)
        path = Path(requirements_txt)
        pkgs, opts = _read_requirements(where, path)
        for k, v in opts.items():
            fields[k] = fields[k] or v
        return self._step(wire.ImageStep(kind="pip_install_from_requirements", args=pkgs,
                                         source=str(requirements_txt),
                                         force_build=_force(force_build, where), **fields))

    def pip_install_from_pyproject(self, pyproject_toml: str | os.PathLike[str],
                                   optional_dependencies: list[str] | None = None, *,
                                   find_links: str | None = None, index_url: str | None = None,
                                   extra_index_url: str | None = None, pre: bool = False,
                                   extra_options: str = "", force_build: bool = False,
                                   env: dict[str, str] | None = None,
                                   **options: object) -> Image:
        """``pip install`` the ``[project] dependencies`` of a local ``pyproject.toml`` and
        those of the ``optional_dependencies`` groups named."""
        where = "Image.pip_install_from_pyproject()"
        fields = _pip_fields(where, find_links, index_url, extra_index_url, pre,
                             extra_options, env, options)
        extras = _strings("pip_install_from_pyproject", optional_dependencies or [])
        path = Path(pyproject_toml)
        pkgs: list[str] = []
        if not _in_container():
            if not path.is_file():
                raise InvalidError(f"{where}: {str(path)!r} is not a file")
            try:
                project = tomllib.loads(path.read_text()).get("project")
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                raise InvalidError(f"{where}: {str(path)!r} does not parse: {e}") from None
            if not isinstance(project, dict):
                raise InvalidError(f"{where}: {str(path)!r} has no [project] table")
            pkgs = _strings(f"pip_install_from_pyproject: {path} dependencies",
                            project.get("dependencies", []))
            groups = project.get("optional-dependencies", {})
            for extra in extras:
                if extra not in groups:
                    raise InvalidError(f"{where}: {str(path)!r} has no optional dependency "
                                       f"group {extra!r} (it has: "
                                       f"{', '.join(sorted(groups)) or 'none'})")
                pkgs += _strings(f"pip_install_from_pyproject: {path} [{extra}]",
                                 groups[extra])
        source = str(pyproject_toml) + "".join(f"[{e}]" for e in extras)
        return self._step(wire.ImageStep(kind="pip_install_from_pyproject", args=pkgs,
                                         source=source,
                                         force_build=_force(force_build, where), **fields))

    def apt_install(self, *packages: str | list[str], force_build: bool = False,
                    **options: object) -> Image:
        """``apt-get install`` these Debian packages."""
        _unsupported.check_options("Image.apt_install()", options, _LATER_OPTIONS,
                                   ["the packages", "force_build"])
        pkgs = _strings("apt_install", packages)
        force = _force(force_build, "Image.apt_install()")
        return self._step(wire.ImageStep(kind="apt_install", args=pkgs, force_build=force)) \
            if pkgs else self

    def run_commands(self, *commands: str | list[str], force_build: bool = False,
                     **options: object) -> Image:
        """Shell commands, each its own layer, as root."""
        _unsupported.check_options("Image.run_commands()", options, _LATER_OPTIONS,
                                   ["the commands", "force_build"])
        cmds = _strings("run_commands", commands)
        force = _force(force_build, "Image.run_commands()")
        return self._step(wire.ImageStep(kind="run_commands", args=cmds, force_build=force)) \
            if cmds else self

    def run_function(self, raw_f: Callable[..., Any], *, args: Sequence[Any] = (),
                     kwargs: Mapping[str, Any] | None = None, force_build: bool = False,
                     **options: object) -> Image:
        """Run ``raw_f(*args, **kwargs)`` once at build time, inside the image, as root and
        with the network (to download a model, say); what it writes stays in the image. The
        function and what it references are pickled by value, so its module need not be
        in the image; the image's Python must be the local one's version."""
        where = "Image.run_function()"
        _unsupported.check_options(where, options, _LATER_OPTIONS | {"timeout", "cpu", "memory"},
                                   ["raw_f", "args", "kwargs", "force_build"])
        if not callable(raw_f) or not hasattr(raw_f, "__qualname__"):
            raise InvalidError(f"{where}: expected a function, got {raw_f!r}")
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs or {}, Mapping):
            raise InvalidError(f"{where}: args= takes a tuple and kwargs= a dict, got "
                               f"{args!r} and {kwargs!r}")
        name = f"{raw_f.__module__}.{raw_f.__qualname__}"
        version = "{}.{}".format(*sys.version_info[:2])
        payload = b"" if _in_container() else _pickle_by_value(where, raw_f, tuple(args),
                                                               dict(kwargs or {}))
        return self._step(wire.ImageStep(kind="run_function", args=[version], source=name,
                                         payload=payload,
                                         force_build=_force(force_build, where)))

    def entrypoint(self, entrypoint_commands: list[str]) -> Image:
        """The container's entrypoint: Burst's own command is appended to it as arguments,
        so a script should end with ``exec "$@"``."""
        if not isinstance(entrypoint_commands, (list, tuple)) or not all(
                isinstance(c, str) for c in entrypoint_commands):
            raise InvalidError(f"Image.entrypoint: expected a list of strings, got "
                               f"{entrypoint_commands!r}")
        return self._step(wire.ImageStep(kind="entrypoint", args=list(entrypoint_commands)))

    def env(self, vars: Mapping[str, str], force_build: bool = False) -> Image:
        """Environment variables for the build steps that follow and for the container."""
        env = _env_vars("Image.env", vars)
        return self._step(wire.ImageStep(kind="env", env=env,
                                         force_build=_force(force_build, "Image.env()")))

    def workdir(self, path: str | PurePosixPath, force_build: bool = False) -> Image:
        """The working directory of later steps and of the container (an absolute path)."""
        if isinstance(path, PurePosixPath):
            path = str(path)
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidError(f"Image.workdir: expected an absolute path, got {path!r}")
        return self._step(wire.ImageStep(kind="workdir", path=path,
                                         force_build=_force(force_build, "Image.workdir()")))

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str, *,
                       copy: bool = False) -> Image:
        """Add one file from this machine at ``remote_path`` (absolute) in the container.
        As in Modal, ``copy=False`` (the default) adds it as the container starts, so no
        build step may follow; ``copy=True`` makes it a build step of the image."""
        src = Path(local_path)
        dest = _absolute("add_local_file", remote_path)
        if _in_container():
            return self._step(wire.ImageStep(kind="add_local_file", args=[str(src)], path=dest,
                                             mounted=not copy))
        if not src.is_file():
            raise InvalidError(f"Image.add_local_file: {str(src)!r} is not a file")
        return self._step(wire.ImageStep(kind="add_local_file", args=[str(src)], path=dest,
                                         files={src.name: src.read_bytes()},
                                         mounted=not copy))

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str, *,
                      copy: bool = False,
                      ignore: Sequence[str] | Callable[[Path], bool] = ()) -> Image:
        """Add a directory tree from this machine at ``remote_path`` (absolute); ``copy`` as
        for :meth:`add_local_file`. ``ignore``: glob patterns matched against each path
        relative to ``local_path`` (``"*.csv"``, ``"data/**"``), or a function of that
        relative path returning True for what to leave out."""
        src = Path(local_path)
        dest = _absolute("add_local_dir", remote_path)
        if _in_container():
            return self._step(wire.ImageStep(kind="add_local_dir", args=[str(src)], path=dest,
                                             mounted=not copy))
        if not src.is_dir():
            raise InvalidError(f"Image.add_local_dir: {str(src)!r} is not a directory")
        if isinstance(ignore, str):
            ignore = [ignore]
        if not callable(ignore) and not all(isinstance(g, str) for g in ignore):
            raise InvalidError(f"Image.add_local_dir: ignore={ignore!r}: give glob patterns "
                               "(strings) or a function of a relative Path")
        files = {rel: data for rel, data in _tree(src).items()
                 if not _ignored(ignore, rel)}
        return self._step(wire.ImageStep(kind="add_local_dir", args=[str(src)], path=dest,
                                         files=files, mounted=not copy))

    def add_local_python_source(self, *modules: str, **options: object) -> Image:
        """Make local Python modules or packages importable in the container, by name."""
        _unsupported.check_options("Image.add_local_python_source()", options,
                                   frozenset({"copy", "ignore"}), ["the module names"])
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

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """Imports that exist only in the image: ``with image.imports(): import torch``.

        Outside a container of this image an ``ImportError`` in the block is ignored (any
        other exception too, with a warning); inside one, it is raised. The modules the
        block imports are recorded on the image (``spec.imports``)."""
        recorder = _ImportRecorder()
        try:
            with recorder:
                yield
        except Exception as exc:
            if self._is_inside():
                raise
            if not isinstance(exc, ImportError):
                warnings.warn(f"Image.imports(): an exception other than ImportError in the "
                              f"block was ignored: {exc!r}", stacklevel=3)
        finally:
            names = [*self._spec.imports,
                     *(n for n in recorder.names if n not in self._spec.imports)]
            self._spec = msgspec.structs.replace(self._spec, imports=names)

    def _is_inside(self) -> bool:
        """Whether this process is a container of this image."""
        if not _in_container():
            return False
        running = os.environ.get("BURST_IMAGE_ID")
        return not running or running == self._spec.ident

    # ---- internals -----------------------------------------------------------------
    @property
    def spec(self) -> wire.ImageSpec:
        return self._spec

    @property
    def content_hash(self) -> str:
        return self._spec.content_hash

    def _step(self, step: wire.ImageStep) -> Image:
        if (any(s.mounted for s in self._spec.steps) and not step.mounted
                and step.kind != "add_local_python_source"):
            raise InvalidError(
                f"Image.{step.kind}(): a build step after add_local_file/add_local_dir with "
                "copy=False, whose files are added as the container starts: add local files "
                "last, or pass copy=True to make them a build step")
        ident = hashlib.sha256(self._spec.ident.encode() + b"\0" + _ident(step)).hexdigest()
        spec = msgspec.structs.replace(self._spec, steps=[*self._spec.steps, step],
                                       ident=ident[:32], imports=[])
        size = sum(len(b) for s in spec.steps for b in s.files.values())
        if size > MAX_LOCAL_BYTES:
            raise InvalidError(f"Image.{step.kind}: local files total {size} bytes, above the "
                               f"{MAX_LOCAL_BYTES} bytes an image may carry; use a Volume")
        return Image(spec)._hashed()

    def _hashed(self) -> Image:
        if not self._spec.ident:  # a base: named by what it is
            # (force_build is new at each definition: left out, as in a step's _ident)
            plain = msgspec.structs.replace(self._spec, steps=[], imports=[], force_build="")
            self._spec = msgspec.structs.replace(
                self._spec, ident=hashlib.sha256(msgspec.msgpack.encode(plain)).hexdigest()[:32])
        # Files added at start (copy=False) are mounted, not built: their content is no
        # part of the hash (a changed file builds nothing), only where they go.
        steps = [msgspec.structs.replace(s, files={}, bundle="") if s.mounted else s
                 for s in self._spec.steps]
        body = msgspec.msgpack.encode(msgspec.structs.replace(self._spec, content_hash="",
                                                              imports=[], steps=steps))
        self._spec = msgspec.structs.replace(
            self._spec, content_hash=hashlib.sha256(body).hexdigest()[:32])
        return self

    def __repr__(self) -> str:
        base = (f"from_registry({self._spec.registry_tag!r})" if self._spec.base == "registry"
                else f"debian_slim({self._spec.python_version!r})")
        if self._spec.add_python:
            base = base[:-1] + f", add_python={self._spec.add_python!r})"
        steps = "".join(f".{describe(s)}" for s in self._spec.steps)
        return f"Image.{base}{steps}"


def _absolute(kind: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidError(f"Image.{kind}: remote_path must be absolute, got {path!r}")
    return str(PurePosixPath(path))


def _ignored(ignore: Sequence[str] | Callable[[Path], bool], rel: str) -> bool:
    if callable(ignore):
        return bool(ignore(Path(rel)))
    path = PurePosixPath(rel)
    return any(path.match(g) or fnmatch.fnmatch(rel, g) for g in ignore)


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


#: The lines framing one agent's build of a deployed image in the app's logs (the hash's
#: first 12 characters): ``burst deploy`` waits for them.
BUILD_STATUS = re.compile(r"^\[image build\] image ([0-9a-f]{12}) (building|ready|failed) "
                          r"on agent ([^\s:]+)")


def build_status(short: str, state: str, agent: str, rest: str = "") -> str:
    """A frame line (without the ``[image build] `` prefix) of :data:`BUILD_STATUS`."""
    return f"image {short} {state} on agent {agent}{rest}"


#: ``FROM`` tags of a Dockerfile that are the machine's base image (``debian_slim``).
_BASE_ALIASES = {f"{name}:{tag}": v for v in PYTHON_VERSIONS
                 for name, tag in (("python", f"{v}-slim"), ("python", f"{v}-slim-bookworm"),
                                   ("burst-base", f"py{v.replace('.', '')}"))}


def _pickle_by_value(where: str, fn: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> bytes:
    """The function (with its module's globals it uses) pickled by value: the image does
    not have the app's module."""
    import cloudpickle

    module = sys.modules.get(fn.__module__)
    by_value = module is not None and fn.__module__ not in ("__main__", "builtins")
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps((fn, args, kwargs)))
    except Exception as e:
        raise InvalidError(f"{where}: cannot serialize {fn.__qualname__} with its arguments: "
                           f"{e}") from None
    finally:
        if by_value:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(module)


#: Options a requirements file may carry (pip's names) and the step field each sets.
_REQ_OPTIONS = {"-i": "index_url", "--index-url": "index_url",
                "--extra-index-url": "extra_index_url", "-f": "find_links",
                "--find-links": "find_links"}


def _read_requirements(where: str, path: Path, depth: int = 0) -> tuple[list[str], dict[str, Any]]:
    """The requirement lines of a local requirements file (``-r`` files included) and the
    options it sets (``--index-url``, ``--extra-index-url``, ``--find-links``, ``--pre``)."""
    if _in_container():
        return [], {}
    if not path.is_file():
        raise InvalidError(f"{where}: requirements file {str(path)!r} is not a file")
    if depth > 10:
        raise InvalidError(f"{where}: {str(path)!r}: -r includes nested too deep")
    pkgs: list[str] = []
    opts: dict[str, Any] = {}
    text = path.read_text().replace("\\\n", " ")
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("-"):
            pkgs.append(" ".join(line.split()))
            continue
        flag, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if flag in ("-r", "--requirement") and value:
            more, more_opts = _read_requirements(where, path.parent / value, depth + 1)
            pkgs += more
            for k, v in more_opts.items():
                opts.setdefault(k, v)
        elif flag in _REQ_OPTIONS and value:
            opts.setdefault(_REQ_OPTIONS[flag], value)
        elif flag == "--pre":
            opts["pre"] = True
        else:
            raise InvalidError(f"{where}: {str(path)!r}, line {n}: the option {flag} is not "
                               "supported (Burst reads requirement specifiers, -r, "
                               "--index-url, --extra-index-url, --find-links and --pre)")
    return pkgs, opts
