"""An image's spare container: the image's own python, started before its container exists.

``python -m burst._shim.spare`` runs in a spare sandbox of an image's root filesystem
(``burst_agent.runtimes.process``): the zygote forked it into its own cgroup and sandbox, it
dropped to the sandbox uid with no capabilities and no-new-privs, and exec'd the image's
interpreter, with the image's environment only (no secret, no container id). It imports
the shim and what the image declares (``BURST_SPARE_IMPORTS``: ``Image.imports()``),
checks that CUDA is not initialised, says ``ready`` on its stdin (a socket to the agent)
and waits there. When a container takes it, the agent (having set the container's cgroup
limits and linked its bundle and socket in) sends one JSON line, ``{"env": ..., "cwd":
...}``: it takes that environment and working directory and runs the shim, the same
process serving the container.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import socket
import sys

from burst._shim import main as shim_main
from burst._shim.zygote import cuda_initialised, preimport

#: Filler in the spare's own environment: the room ``/proc/<pid>/environ`` has for the
#: container's (rewritten in place once it is known).
PAD = "BURST_SPARE_PAD"


def _rewrite_environ(env: dict[str, str]) -> None:
    """Show ``env`` in ``/proc/<pid>/environ`` (tools find a container's processes by its
    ``BURST_CONTAINER_ID``), writing over the environment block the process was started
    with, where it fits (no privilege needed: it is this process's own memory). Called
    after ``os.environ`` was cleared and set again, so the C library no longer points
    into that block."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5))
    except (OSError, ValueError, IndexError):
        return
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    if not start or end - start < len(data):
        return
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)


def main() -> None:
    ctl = socket.socket(fileno=os.dup(0))
    names = [n.strip() for n in os.environ.pop("BURST_SPARE_IMPORTS", "").split(",")
             if n.strip()]
    os.environ.pop(PAD, None)
    for err in preimport(names):
        print(f"burst spare: pre-import failed: {err}", file=sys.stderr, flush=True)
    why = cuda_initialised()
    if why:
        ctl.sendall(f"cuda: {why} after importing {', '.join(names)}\n".encode()[:4000])
        sys.exit(3)
    ctl.sendall(b"ready\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = ctl.recv(1 << 16)
        if not chunk:  # the agent closed this spare: nobody took it
            os._exit(0)
        data += chunk
    req = json.loads(data)
    env = {str(k): str(v) for k, v in req["env"].items()}
    os.chdir(str(req["cwd"]))
    os.environ.clear()
    os.environ.update(env)
    _rewrite_environ(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    ctl.close()
    importlib.invalidate_caches()  # the bundle was linked in after the imports above
    sys.argv = [shim_main.__file__]
    shim_main.main()


if __name__ == "__main__":
    main()
