"""The container runtime interface, and the process runtime (a subprocess per container).

Every runtime starts Burst's shim (``python -m burst._shim``) with the bundle as working
directory and the agent's socket path in its environment; the shim protocol is the same
whatever the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class ContainerSpec:
    container_id: str
    bundle_dir: Path
    socket_path: Path
    module: str
    qualname: str
    env: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.125
    memory_mb: int = 128
    gpu_indices: list[int] = field(default_factory=list)


class ContainerHandle(Protocol):
    pid: int | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...
    def signal(self, sig: int) -> None: ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: ContainerSpec) -> ContainerHandle: ...


class ProcessHandle:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            # The container is its own process group: signal everything it started.
            os.killpg(self.proc.pid, sig)


class ProcessRuntime:
    """A plain subprocess per container (the sandboxed variant comes with bubblewrap)."""

    name = "process"

    def __init__(self, python: str = "") -> None:
        self.python = python or sys.executable

    async def start(self, spec: ContainerSpec) -> ProcessHandle:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(spec.bundle_dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "BURST_SHIM_SOCKET": str(spec.socket_path),
            "BURST_SHIM_MODULE": spec.module,
            "BURST_SHIM_QUALNAME": spec.qualname,
            "BURST_CONTAINER_ID": spec.container_id,
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
            **spec.env,
        }
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "burst._shim",
            cwd=str(spec.bundle_dir), env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_agent,
        )
        return ProcessHandle(proc)


def _die_with_agent() -> None:
    """In the child: get SIGKILL if the agent dies, so no container outlives its agent."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the shim still exits when the agent's socket closes
        pass


def make_runtime(name: str, python: str = "") -> Runtime:
    if name == "process":
        return ProcessRuntime(python)
    raise ValueError(f"unknown runtime {name!r}: use 'process'")


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
