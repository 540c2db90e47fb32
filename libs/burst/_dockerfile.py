"""A Dockerfile read into :class:`burst.Image` steps (``Image.from_dockerfile``).

Only what both runtimes can build: ``FROM`` one base (no multi-stage), ``RUN``, ``COPY`` and
``ADD`` of local files from the build context, ``ENV``, ``WORKDIR`` and ``ENTRYPOINT``.
Any other instruction is refused by name with its line number, never silently dropped.
"""

from __future__ import annotations

import glob
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from burst.exception import InvalidError

#: Instructions ``from_dockerfile`` turns into steps.
SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "ENTRYPOINT")
#: Instructions Docker knows that Burst refuses (named in the error).
KNOWN = frozenset({
    "ARG", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "USER", "VOLUME", "SHELL", "HEALTHCHECK",
    "STOPSIGNAL", "ONBUILD",
})


@dataclass
class Op:
    """One instruction as a step: ``kind`` is the Image method it becomes."""

    kind: str
    line: int
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: add_local_file/dir: the local source; workdir/add_local_*: the image path.
    local: Path | None = None
    path: str = ""


@dataclass
class Parsed:
    base: str
    ops: list[Op]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text): comments and blank lines dropped,
    backslash continuations joined (comment lines inside a continuation are skipped)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        out.append((start, " ".join(b for b in buf if b)))
        buf = []
    if buf:
        out.append((start, " ".join(b for b in buf if b)))
    return out


def _exec_form(where: str, rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        raise InvalidError(f"{where}: invalid JSON array {rest!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise InvalidError(f"{where}: expected a JSON array of strings, got {rest!r}")
    return value


def _flags(where: str, ins: str, rest: str) -> str:
    if rest.startswith("--"):
        flag = rest.split()[0].split("=")[0]
        raise InvalidError(f"{where}: the flag {flag} of {ins} is not supported by "
                           "Image.from_dockerfile")
    return rest


def parse(text: str, path: str, context: Path) -> Parsed:
    """Steps of a Dockerfile; ``context`` is the directory ``COPY``/``ADD`` read from."""
    base = ""
    ops: list[Op] = []
    workdir = "/"
    for n, line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        ins, rest = word.upper(), rest.strip()
        where = f"Image.from_dockerfile: {path}, line {n}"
        if ins not in SUPPORTED:
            if ins in KNOWN:
                raise InvalidError(f"{where}: the instruction {ins} is not supported (Burst "
                                   f"builds {', '.join(SUPPORTED)})")
            raise InvalidError(f"{where}: the Dockerfile does not parse: unknown instruction "
                               f"{word!r}")
        if not rest:
            raise InvalidError(f"{where}: {ins} needs arguments")
        if ins == "FROM":
            if base:
                raise InvalidError(f"{where}: a second FROM (a multi-stage build) is not "
                                   "supported")
            parts = _flags(where, ins, rest).split()
            if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].upper() != "AS"):
                raise InvalidError(f"{where}: the Dockerfile does not parse: FROM {rest!r}")
            base = parts[0]
            continue
        if not base:
            raise InvalidError(f"{where}: the Dockerfile does not parse: {ins} before FROM")
        if ins == "RUN":
            argv = _exec_form(where, _flags(where, ins, rest))
            ops.append(Op("run_commands", n, [shlex.join(argv) if argv else rest]))
        elif ins == "ENTRYPOINT":
            argv = _exec_form(where, rest)
            ops.append(Op("entrypoint", n, argv or ["/bin/sh", "-c", rest]))
        elif ins == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / rest.strip('"'))
            ops.append(Op("workdir", n, path=workdir))
        elif ins == "ENV":
            ops.append(Op("env", n, env=_env(where, rest)))
        else:  # COPY / ADD
            ops += _copy(where, ins, n, _flags(where, ins, rest), context, workdir)
    if not base:
        raise InvalidError(f"Image.from_dockerfile: {path}: the Dockerfile does not parse: "
                           "no FROM instruction")
    return Parsed(base, ops)


def _env(where: str, rest: str) -> dict[str, str]:
    try:
        words = shlex.split(rest)
    except ValueError as e:
        raise InvalidError(f"{where}: the Dockerfile does not parse: ENV {rest!r} ({e})") \
            from None
    if "=" not in words[0]:  # the old form: ENV NAME value with spaces
        if len(words) < 2:
            raise InvalidError(f"{where}: ENV {rest!r} has no value")
        return {words[0]: " ".join(words[1:])}
    env: dict[str, str] = {}
    for w in words:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise InvalidError(f"{where}: the Dockerfile does not parse: ENV item {w!r} is "
                               "not NAME=value")
        env[k] = v
    return env


def _copy(where: str, ins: str, n: int, rest: str, context: Path,
          workdir: str) -> list[Op]:
    argv = _exec_form(where, rest)
    if argv is None:
        try:
            argv = shlex.split(rest)
        except ValueError as e:
            raise InvalidError(f"{where}: the Dockerfile does not parse: {ins} {rest!r} "
                               f"({e})") from None
    if len(argv) < 2:
        raise InvalidError(f"{where}: {ins} needs a source and a destination")
    *sources, dest = argv
    target = str(PurePosixPath(workdir) / dest)
    if dest.endswith("/"):
        target += "/"
    ops: list[Op] = []
    root = context.resolve()
    for src in sources:
        if "://" in src:
            raise InvalidError(f"{where}: {ins} of a URL ({src!r}) is not supported: only "
                               "local files of the build context")
        matches = sorted(glob.glob(str(root / src))) if any(c in src for c in "*?[") \
            else [str(root / src)]
        if not matches or not Path(matches[0]).exists():
            raise InvalidError(f"{where}: {ins} source {src!r} is not in the build context "
                               f"{str(root)!r}")
        for m in matches:
            p = Path(m).resolve()
            if p != root and root not in p.parents:
                raise InvalidError(f"{where}: {ins} source {src!r} is outside the build "
                                   f"context {str(root)!r}")
            if p.is_dir():
                ops.append(Op("add_local_dir", n, local=p, path=target.rstrip("/") or "/"))
            else:
                several = len(sources) > 1 or len(matches) > 1
                if several and not target.endswith("/"):
                    raise InvalidError(f"{where}: {ins} of several sources needs a directory "
                                       f"destination ending in '/', got {dest!r}")
                file_dest = target + p.name if target.endswith("/") else target
                ops.append(Op("add_local_file", n, local=p, path=file_dest))
    return ops
