"""Where the code runs. Inside a container the shim sets ``platform`` to its channel to
the agent, which performs platform calls (Dict, Queue) in the container's workspace;
elsewhere it stays None and the SDK talks HTTP to the gateway."""

from __future__ import annotations

from typing import Protocol


class Platform(Protocol):
    def request(self, kind: str, body: bytes, timeout: float | None = None) -> bytes: ...


platform: Platform | None = None
