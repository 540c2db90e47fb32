"""Settings from environment variables.

Each service defines one dataclass of its settings (in its own ``settings.py``) deriving
from :class:`CommonSettings`; :func:`load` fills it from ``BURST_<FIELD>`` variables.
Every timer is a setting, so tests of failure paths can run in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def default_home() -> str:
    return os.environ.get("BURST_HOME") or str(Path.home() / ".burst")


@dataclasses.dataclass
class CommonSettings:
    #: NATS server URL (JetStream enabled).
    nats_url: str = "nats://127.0.0.1:4222"
    #: The cluster CA's certificate (PEM file) when NATS serves TLS (``burst up --listen``).
    nats_ca: str = ""
    #: Redis URL (warm pools, counters; derived state only).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Burst's own state directory (tokens, NATS store, logs); never visible to user code.
    home: str = dataclasses.field(default_factory=default_home)
    #: The derived webhook-sealing keys the gateway writes and billing reads (never a
    #: master key); empty: ``$BURST_HOME/webhook.keys``.
    webhook_keys_file: str = ""
    #: Instance id of this replica; unique per process.
    instance: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    )
    #: Log level name.
    log_level: str = "info"
    #: Seconds between this service's liveness records in KV.
    service_heartbeat_interval: float = 2.0
    #: A file touched after each liveness record written (empty: none); the compose
    #: cluster's health checks read its age.
    health_file: str = ""
    #: How long outputs, call records and idempotency keys are kept (7 days, as Modal).
    result_retention: float = 7 * 24 * 3600.0
    #: How long the outputs and records of transient calls are kept: a client's waited
    #: ``.remote()`` (no idempotency key, not from a container) and the SDK's map inputs,
    #: which nobody asks for again once their caller has them. From 120 (the streams'
    #: duplicate window) to ``result_retention``; a bad value stops the service.
    transient_result_retention: float = 600.0
    #: Share of calls traced when their caller did not ask (0: none, 1: every one); see
    #: burst_core.tracing. A call is also traced on request (``burst run --trace``).
    trace_sample: float = 0.0
    #: False: no call is traced, whatever it asks (no span, trace headers ignored).
    tracing: bool = True
    #: An OTLP/HTTP collector's base URL spans are also sent to ("": the
    #: ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable, if set; else none).
    trace_otlp_endpoint: str = ""
    #: Largest total of file sizes one volume may hold, in bytes (a commit past it fails,
    #: naming the volume and the limit). Read by the gateway and the agents.
    volume_max_bytes: int = 1 << 40
    #: Seconds a volume's chunk that no file holds any more (its file was replaced or
    #: removed) is kept before a later commit deletes it: what a reader of the older
    #: version has to fetch it.
    volume_chunk_grace: float = 600.0
    #: How long containers' output and platform events are kept (stream BURST_LOGS), and
    #: the most bytes kept (the oldest go first). Every service must use the same values.
    log_retention: float = 7 * 24 * 3600.0
    log_max_bytes: int = 1 << 30
    #: Outputs a process that waits on calls (the gateway; an agent whose containers
    #: call) keeps in memory for waiters that ask after they arrived, at most this many
    #: and for at most ``recent_outputs_age`` seconds; older ones are read from the
    #: outputs stream (slower, never lost).
    recent_outputs: int = 50_000
    recent_outputs_age: float = 120.0

    def __post_init__(self) -> None:
        # (every service loads its settings first: a bad value stops it, named)
        from burst_core.bus.topology import check_transient_retention

        check_transient_retention(self.transient_result_retention, self.result_retention)

    def topology(self) -> Any:
        """The streams' and buckets' retention (``burst_core.bus.Topology``) these
        settings ask for."""
        from burst_core.bus.topology import Topology, check_transient_retention

        check_transient_retention(self.transient_result_retention, self.result_retention)
        return Topology(result_retention=self.result_retention,
                        transient_retention=self.transient_result_retention,
                        log_retention=self.log_retention, log_max_bytes=self.log_max_bytes)


def _convert(raw: str, tp: Any, name: str) -> Any:
    try:
        if tp is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if tp in (int, float, str):
            return tp(raw)
        if tp in (int | None, float | None, str | None):
            if raw.strip().lower() in ("", "none"):
                return None
            inner = [a for a in tp.__args__ if a is not type(None)][0]
            return inner(raw)
    except ValueError:
        raise ValueError(f"setting BURST_{name.upper()}={raw!r} is not a valid {tp}") from None
    raise TypeError(f"unsupported setting type {tp} for {name}")


def load(cls: type[T], env: dict[str, str] | None = None, **overrides: Any) -> T:
    """Build settings ``cls`` from ``BURST_*`` environment variables, then ``overrides``."""
    env = dict(os.environ) if env is None else env
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"BURST_{f.name.upper()}"
        if key in env:
            values[f.name] = _convert(env[key], hints[f.name], f.name)
    values.update(overrides)
    return cls(**values)
