"""Tracing a call from the SDK on request (``burst run --trace``, or ``BURST_TRACE=1``):
the call's W3C ``traceparent`` goes to the gateway, and the SDK's own span (the whole
``.remote()``, as the client saw it) is sent after the call (``POST /v1/traces``). Standard
library only: ``import burst`` stays light, and an untraced call pays one check."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

#: Call ids traced by this process (``burst run --trace`` lists them at its end).
traced_calls: list[str] = []


def requested() -> bool:
    return os.environ.get("BURST_TRACE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Span:
    trace_id: str = field(default_factory=lambda: os.urandom(16).hex())
    span_id: str = field(default_factory=lambda: os.urandom(8).hex())
    start: float = field(default_factory=time.time)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


def begin(client: object) -> Span | None:
    """A span for the call about to be made, if calls are traced (and the client talks to
    the gateway: a call made inside a container carries no trace of its own)."""
    from burst.client import ContainerClient

    if not requested() or isinstance(client, ContainerClient):
        return None
    return Span()


def end(client: object, span: Span, call_id: str, name: str, kind: str = "sdk.call",
        attributes: dict[str, object] | None = None) -> None:
    """Send the SDK's span of the call (a failure to send is reported, never raised).
    ``kind``: ``sdk.call`` (``.remote()``), ``sdk.spawn``, or ``sdk.map`` (a span of many
    calls: ``call_id`` is the first, and the span is kept with the trace's spans of no
    single call, the parent of each page's ``gateway.batch``)."""
    from burst.client import Client

    assert isinstance(client, Client)
    traced_calls.append(call_id)
    doc = [{"trace_id": span.trace_id, "span_id": span.span_id, "name": kind,
            "service": "sdk", "start": span.start, "end": time.time(),
            "call_id": "" if kind == "sdk.map" else call_id,
            "attributes": {"burst.function": name, **(attributes or {})}}]
    try:
        client.request("POST", "/v1/traces", json.dumps(doc).encode(), "application/json")
    except Exception as e:  # the trace lacks the SDK's span; the call is unaffected
        print(f"burst: the trace of {call_id} lacks the client's span: {e}", file=sys.stderr)
