"""What a container needs of the agent that hosts it, as a protocol: the container and
its input dispatch depend on this, never on ``burst_agent.agent`` (which depends on
them), so the agent's imports point one way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst_agent.attempts import Attempts
from burst_agent.bundles import BundleCache
from burst_agent.inputs import InputPuller
from burst_agent.settings import AgentSettings
from burst_core.calls.caller import Caller
from burst_core.objects import Objects
from burst_core.tracing import Tracing
from burst_core.volumes import Volumes

if TYPE_CHECKING:
    from burst_agent.figures import Figures
    from burst_agent.runtimes.base import Runtime
    from burst_agent.volumes import VolumeCache
    from burst_agent.web import WebRelay


class AgentHost(Protocol):
    agent_id: str
    settings: AgentSettings
    tracing: Tracing
    nc: NATS
    js: JetStreamContext
    objects: Objects
    volumes: Volumes
    volume_cache: VolumeCache
    bundles: BundleCache
    local_files: BundleCache
    attempts: Attempts
    runtime: Runtime
    socket_dir: str
    #: Recently cancelled calls (call id → when).
    cancelled: dict[str, float]
    #: Web requests taken from the gateway (burst_agent.web).
    web: WebRelay
    #: Figures for /metrics (burst_agent.figures).
    figures: Figures

    def ack_later(self, msg: Msg) -> None: ...

    async def flush_acks(self, confirm: bool = False) -> None: ...

    def inputs(self, fn_key: str, ensure_consumer: Callable[[], Awaitable[object]],
               ) -> InputPuller: ...

    async def blob_get(self, workspace: str, ref: str) -> bytes: ...

    async def blob_put(self, workspace: str, data: bytes) -> str: ...

    async def release(self, container_id: str) -> None: ...

    async def caller(self) -> Caller: ...
