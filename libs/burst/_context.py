"""Where the code runs. Inside a container the shim sets ``platform`` to its channel to
the agent, which performs platform calls (Dict, Queue) in the container's workspace;
elsewhere it stays None and the SDK talks HTTP to the gateway."""

from __future__ import annotations

import contextvars
import os
from typing import Protocol


class Platform(Protocol):
    def request(self, kind: str, body: bytes, timeout: float | None = None) -> bytes: ...


platform: Platform | None = None

#: The call and input being run on this thread or task (set by the shim; "" elsewhere).
current_call: contextvars.ContextVar[str] = contextvars.ContextVar("burst_call", default="")
current_input: contextvars.ContextVar[str] = contextvars.ContextVar("burst_input", default="")


def app_name() -> str:
    """The name of the app whose container this is ("" outside containers)."""
    return os.environ.get("BURST_APP", "") if platform is not None else ""
