from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class GatewaySettings(CommonSettings):
    #: Address and port the HTTP API listens on.
    host: str = "127.0.0.1"
    port: int = 8780
    #: sha256 of the admin token `burst up` created; stored on start if missing.
    bootstrap_token_hash: str = ""
    #: Workspace of the bootstrap admin token.
    bootstrap_workspace: str = "default"
    #: Seconds after its last liveness record that a service replica leaves ``/v1/status``
    #: (one killed without a goodbye; a restarted one writes under a new instance id).
    service_heartbeat_timeout: float = 10.0
    #: Longest a synchronous call request is held before answering "pending".
    max_sync_wait: float = 60.0
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 64 << 20
    #: Seconds a token lookup stays cached.
    token_cache_ttl: float = 5.0
    #: At most one ``input.accepted`` signal per function per this many seconds from this
    #: gateway: calls in between share a trailing one (``burst_core.calls.Signals``);
    #: 0 sends one per call.
    signal_interval: float = 0.05
