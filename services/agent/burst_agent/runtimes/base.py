"""The container runtime interface: what a runtime starts and the handle it gives back.

Every runtime starts Burst's shim (``python -m burst._shim``) with the bundle as working
directory and the agent's socket path in its environment; the shim protocol is the same
whatever the runtime. This module imports nothing else of the agent's.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL


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
    #: Hard memory limit (MiB); 0 means the request, ``memory_mb``.
    memory_limit_mb: int = 0
    #: CPU limit (cores); 0 means the request plus the agent's ``cpu_headroom``.
    cpu_limit: float = 0.0
    #: No network at all (``block_network=True``); else the runtime's NAT with deny rules.
    block_network: bool = False
    #: Volume mounts: (host directory, path in the container, read-only).
    mounts: list[tuple[Path, str, bool]] = field(default_factory=list)


class ContainerHandle(Protocol):
    pid: int | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...
    def signal(self, sig: int) -> None: ...
    def exit_reason(self) -> str:
        """After ``wait``: why the runtime killed the process ("out of memory (limit 512
        MiB)"), or "" when it exited (or crashed) by itself."""
        ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: ContainerSpec) -> ContainerHandle: ...
