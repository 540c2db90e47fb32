"""Traces of calls (OpenTelemetry), kept in the cluster and exported over OTLP/HTTP.

A traced call carries a W3C ``traceparent``: from the SDK (``burst run --trace``) or an
HTTP client (the ``traceparent`` header with the sampled flag, or ``X-Burst-Trace: 1``)
to the gateway, and from there in the NATS headers of the call's input (to the agent) and
of its ``input.accepted`` signal (to the scheduler, which passes it on with the placement
order of a container it starts for the call). A call without one is traced for a share
``BURST_TRACE_SAMPLE`` of calls (0 by default: nothing is traced, no span is made).

Every span names its call (``burst.call_id``) and workspace (``burst.workspace``). Each
service's spans go to the ``BURST_TRACES`` stream under ``burst.traces.<ws>.<call id>``
(kept ``BURST_TRACE_RETENTION`` seconds), which ``GET /v1/calls/{id}/trace`` and
``burst trace CALL_ID`` read, and, when ``BURST_TRACE_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to that collector over OTLP/HTTP (protobuf).
The shim imports none of this: it reports timestamps and the agent makes its spans.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
from collections.abc import Mapping
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from burst_core import logs

log = logs.get("burst.tracing")

TRACEPARENT = "traceparent"
#: The HTTP header that asks for one call to be traced (any of 1, true, yes, on).
TRACE_REQUEST_HEADER = "x-burst-trace"
#: The NATS header naming the call a placement order was made for.
CALL_HEADER = "Burst-Trace-Call"
#: The NATS header with the acceptance time (seconds since the epoch) of the traced call
#: that asks an agent whether it waits for one of its starting containers.
ACCEPTED_HEADER = "Burst-Trace-Accepted"
ATTR_CALL = "burst.call_id"
ATTR_WORKSPACE = "burst.workspace"
#: Most spans kept per call (the stream is burst_core.bus.topology's STREAM_TRACES).
MAX_SPANS_PER_CALL = 1000

_propagator = TraceContextTextMapPropagator()


def subject(workspace: str, call_id: str) -> str:
    """Where a call's spans are kept; ``call_id`` may also be a trace id (32 hex digits):
    the spans of that trace that are no single call's (``shared``)."""
    return f"burst.traces.{workspace}.{call_id}"


def shared_key(span: SpanRecord) -> str:
    """The subject key of a span that belongs to no single call: ``sdk.map`` (a map of
    many calls), ``gateway.batch`` (a page of them) and ``agent.relay`` (calls made from
    inside a traced container). A call's trace takes in those that are its ancestors or
    its spans' children (:func:`related`)."""
    return span.trace_id


def related(own: list[SpanRecord], shared: list[SpanRecord]) -> list[SpanRecord]:
    """The spans of ``shared`` (its trace's spans of no single call) that belong in the
    trace of the call whose spans are ``own``: its ancestors (the map and page it came
    in, the relay that made it from a parent call) and its spans' direct children (the
    relays of the calls it made)."""
    by_id = {s.span_id: s for s in shared}
    ids = {s.span_id for s in own}
    out: dict[str, SpanRecord] = {}
    for s in own:  # up from each span, through the shared ones
        parent = by_id.get(s.parent_id)
        while parent is not None and parent.span_id not in out and parent.span_id not in ids:
            out[parent.span_id] = parent
            parent = by_id.get(parent.parent_id)
    for s in shared:
        if s.parent_id in ids:
            out.setdefault(s.span_id, s)
    return list(out.values())


class SpanRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One finished span as the cluster keeps it (times in seconds since the epoch)."""

    trace_id: str
    span_id: str
    parent_id: str = ""
    name: str
    service: str
    start: float
    end: float
    call_id: str = ""
    status: str = ""
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)


span_decoder = msgspec.msgpack.Decoder(SpanRecord)
spans_json_decoder = msgspec.json.Decoder(list[SpanRecord])


def check_sample(share: float) -> float:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"BURST_TRACE_SAMPLE={share!r}: use a share from 0 (no call traced, "
                         "the default) to 1 (every call)")
    return share


def otlp_endpoint(configured: str = "") -> str:
    """The OTLP/HTTP collector's base URL (``/v1/traces`` is added), or "" for none."""
    return (configured or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).rstrip("/")


def record_of(span: ReadableSpan, service: str) -> SpanRecord:
    ctx = span.context
    assert ctx is not None
    attrs = dict(span.attributes or {})
    return SpanRecord(
        trace_id=format(ctx.trace_id, "032x"), span_id=format(ctx.span_id, "016x"),
        parent_id=format(span.parent.span_id, "016x") if span.parent else "",
        name=span.name, service=service, start=(span.start_time or 0) / 1e9,
        end=(span.end_time or 0) / 1e9, call_id=str(attrs.pop(ATTR_CALL, "")),
        status="error" if span.status.status_code == trace.StatusCode.ERROR else "",
        attributes={k: v for k, v in attrs.items() if k != ATTR_WORKSPACE})


class StoreProcessor(SpanProcessor):
    """Publishes each finished span of a call to the traces stream (no ack awaited: a
    lost span costs that span)."""

    def __init__(self, nc: Any, service: str) -> None:
        self.nc, self.service = nc, service
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop = asyncio.get_running_loop()

    def on_end(self, span: ReadableSpan) -> None:
        attrs = span.attributes or {}
        ws, call_id = attrs.get(ATTR_WORKSPACE), attrs.get(ATTR_CALL)
        if not ws:
            return
        record = record_of(span, self.service)
        data = msgspec.msgpack.encode(record)
        subj = subject(str(ws), str(call_id) if call_id else shared_key(record))
        self._loop.call_soon_threadsafe(self._publish, subj, data)

    def _publish(self, subj: str, data: bytes) -> None:
        fut = asyncio.ensure_future(self.nc.publish(subj, data))
        self._tasks.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.debug("span_publish_failed", error=repr(fut.exception()))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Tracing:
    """One service's tracer: sampling, propagation, and where its spans go."""

    def __init__(self, service: str, nc: Any, sample: float = 0.0,
                 otlp: str = "", enabled: bool = True) -> None:
        self.service = service
        self.enabled = enabled
        self.sample = check_sample(sample) if enabled else 0.0
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": f"burst-{service}"}), sampler=ALWAYS_ON)
        self.store = StoreProcessor(nc, service)
        self.provider.add_span_processor(self.store)
        self.otlp = otlp_endpoint(otlp)
        self.exporter: BatchSpanProcessor | None = None
        if self.otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.exporter = BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{self.otlp}/v1/traces"), schedule_delay_millis=500)
            self.provider.add_span_processor(self.exporter)
        self.tracer = self.provider.get_tracer("burst")

    def shutdown(self) -> None:
        self.provider.shutdown()

    # ---- starting spans ------------------------------------------------------------
    def incoming(self, headers: Mapping[str, str] | None) -> otel_context.Context | None:
        """The sampled trace context ``headers`` carry, or None."""
        if not headers or TRACEPARENT not in headers or not self.enabled:
            return None
        ctx = _propagator.extract(carrier=dict(headers))
        sc = trace.get_current_span(ctx).get_span_context()
        return ctx if sc.is_valid and sc.trace_flags.sampled else None

    def decide(self, headers: Mapping[str, str] | None, forced: bool = False
               ) -> otel_context.Context | None:
        """The context a request's span starts in: the caller's if it traces the call, a
        new root if it asked (``forced``) or the share drew it, else None (untraced)."""
        ctx = self.incoming(headers)
        if ctx is not None:
            return ctx
        if not self.enabled:
            return None
        if forced or (self.sample > 0 and random.random() < self.sample):
            return otel_context.Context()
        return None

    def span(self, name: str, ctx: otel_context.Context | None, workspace: str,
             call_id: str = "", start: float | None = None,
             attributes: Mapping[str, Any] | None = None) -> trace.Span:
        """Start a span (``start`` in seconds since the epoch); the caller ends it."""
        attrs: dict[str, Any] = {ATTR_WORKSPACE: workspace, **(attributes or {})}
        if call_id:
            attrs[ATTR_CALL] = call_id
        return self.tracer.start_span(
            name, context=ctx, attributes=attrs,
            start_time=None if start is None else int(start * 1e9))

    def add_records(self, records: list[SpanRecord], workspace: str) -> None:
        """Spans made elsewhere (the SDK's) kept and exported as this service's own."""
        for r in records:
            parent = (SpanContext(int(r.trace_id, 16), int(r.parent_id, 16), True,
                                  TraceFlags(TraceFlags.SAMPLED)) if r.parent_id else None)
            span = ReadableSpan(
                name=r.name,
                context=SpanContext(int(r.trace_id, 16), int(r.span_id, 16), False,
                                    TraceFlags(TraceFlags.SAMPLED)),
                parent=parent,
                resource=Resource.create({"service.name": f"burst-{r.service}"}),
                attributes={**r.attributes, ATTR_WORKSPACE: workspace,
                            **({ATTR_CALL: r.call_id} if r.call_id else {})},
                start_time=int(r.start * 1e9), end_time=int(r.end * 1e9))
            data = msgspec.msgpack.encode(r)
            self.store._publish(subject(workspace, r.call_id or shared_key(r)), data)
            if self.exporter is not None:
                self.exporter.on_end(span)


def headers_of(span: trace.Span, call_id: str = "") -> dict[str, str]:
    """NATS/HTTP headers carrying ``span``'s context (and the call it is for)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    if call_id:
        carrier[CALL_HEADER] = call_id
    return carrier


def context_of(span: trace.Span) -> otel_context.Context:
    return trace.set_span_in_context(span)


def remote_context(traceparent: str) -> otel_context.Context | None:
    ctx = _propagator.extract(carrier={TRACEPARENT: traceparent})
    sc = trace.get_current_span(ctx).get_span_context()
    return ctx if sc.is_valid else None


__all__ = ["NonRecordingSpan", "SpanRecord", "Tracing", "headers_of"]


def valid_id(value: str, digits: int) -> bool:
    return len(value) == digits and all(c in "0123456789abcdef" for c in value) and (
        value.strip("0") != "")


#: The trace headers the calls made in this context carry (their inputs' and signals'
#: NATS headers); None when the call is not traced (the common case: one lookup).
outgoing: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "burst_trace_outgoing", default=None)
