"""Source bundles: the app's module and the local modules it imports, by content hash.

Code ships by source, never by pickling functions. The bundle is a deterministic tar
(sorted entries, zeroed times and owners), so the same sources always hash the same and
are uploaded and unpacked once.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Burst's own packages are in every container already; never ship them with an app.
_BURST_PACKAGES = {"burst", "burst_core", "burst_gateway", "burst_scheduler", "burst_billing",
                   "burst_agent"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", ".venv", "venv", "__pycache__", ".git"}


@dataclass
class Bundle:
    data: bytes
    hash: str
    files: list[str]


def _stdlib_roots() -> list[Path]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(Path(p).resolve())
    roots.add(Path(sys.prefix).resolve())
    roots.add(Path(sys.base_prefix).resolve())
    return sorted(roots)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def local_modules(root: Path, modules: dict[str, ModuleType] | None = None) -> list[Path]:
    """Source files of imported modules that live under ``root`` (the app's directory),
    outside any virtual environment or the interpreter's own directories."""
    root = root.resolve()
    mods = sys.modules if modules is None else modules
    excluded = [r for r in _stdlib_roots() if not _is_under(root, r)]
    files: set[Path] = set()
    for name, mod in list(mods.items()):
        if name.split(".")[0] in _BURST_PACKAGES:
            continue
        f = getattr(mod, "__file__", None)
        # Only real source files: some modules carry a made-up, relative __file__ (torch's
        # ``torch.classes`` says "_classes.py"), which would resolve into the app's folder.
        if not isinstance(f, str) or not f.endswith(".py") or not os.path.isabs(f):
            continue
        path = Path(f).resolve()
        if not path.is_file():
            continue
        if not _is_under(path, root) or any(_is_under(path, r) for r in excluded):
            continue
        rel = path.relative_to(root)
        if any(part in _EXCLUDED_DIRS for part in rel.parts):
            continue
        files.add(path)
        # A package module needs its parents' __init__.py files up to the root.
        parent = path.parent
        while parent != root and _is_under(parent, root):
            init = parent / "__init__.py"
            if init.exists():
                files.add(init)
            parent = parent.parent
    return sorted(files)


def of_files(files: dict[str, bytes]) -> Bundle:
    """A bundle of ``files`` (relative path -> content), deterministic as ``build``'s: the
    files an image adds as each container starts (``add_local_file/dir(copy=False)``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))
    raw = buf.getvalue()
    return Bundle(data=raw, hash=hashlib.sha256(raw).hexdigest(), files=sorted(files))


def build(root: Path, extra_files: list[Path] = ()) -> Bundle:  # type: ignore[assignment]
    root = root.resolve()
    paths = sorted(set(local_modules(root)) | {Path(p).resolve() for p in extra_files})
    buf = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            arcname = path.relative_to(root).as_posix()
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
            names.append(arcname)
    raw = buf.getvalue()
    return Bundle(data=raw, hash=hashlib.sha256(raw).hexdigest(), files=names)
