"""Traces of calls: a traced call's gateway span, the SDK's spans sent in, and a call's
kept spans read back (``burst trace CALL_ID``). See burst_core.tracing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import nats.js.errors
from fastapi import APIRouter, Depends, Request

from burst.exception import InvalidError, NotFoundError
from burst.wire import CallResponse
from burst_core import tracing
from burst_core.bus.topology import STREAM_TRACES, Topology
from burst_core.calls.caller import valid_call_id
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import JSON
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()


def valid_web_request_id(value: str) -> bool:
    """A web request's id (``wr-`` and 32 hex digits): a traced request's spans are kept
    under it (its response's ``X-Burst-Request-Id``)."""
    return (value.startswith("wr-") and len(value) == 35
            and all(c in "0123456789abcdef" for c in value[3:]))
_TRUE = {"1", "true", "yes", "on"}
#: Most spans one request may send in.
MAX_SENT_SPANS = 100


def wants_trace(headers: Mapping[str, str]) -> bool:
    """Whether the request asks for its call to be traced (``X-Burst-Trace``)."""
    value = headers.get(tracing.TRACE_REQUEST_HEADER)
    if value is None:
        return False
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise InvalidError(f"X-Burst-Trace: {value!r}: use 1 (trace this call) or 0")


async def traced(gw: Gateway, headers: Mapping[str, str], workspace: str, app: str, fn: str,
                 call: Callable[[], Awaitable[tuple[CallResponse, bool]]],
                 ) -> tuple[CallResponse, bool]:
    """Make the call; traced (a ``gateway.call`` span, its context on the call's input
    and signal) if the caller asked or the sample share drew it."""
    ctx = gw.tracing.decide(headers, wants_trace(headers))
    if ctx is None:
        return await call()
    span = gw.tracing.span("gateway.call", ctx, workspace,
                           attributes={"burst.app": app, "burst.function": fn})
    token = tracing.outgoing.set(tracing.headers_of(span))
    try:
        resp, replayed = await call()
        span.set_attribute(tracing.ATTR_CALL, resp.call_id)
        span.set_attribute("burst.status", resp.status)
        return resp, replayed
    finally:
        tracing.outgoing.reset(token)
        span.end()


async def traced_batch(gw: Gateway, headers: Mapping[str, str], workspace: str, app: str,
                       fn: str, submit: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    """Create a page of calls (a map's); traced (one ``gateway.batch`` span for the page,
    parent of each input's spans, kept with the trace's spans of no single call) if the
    caller asked or the sample share drew it."""
    if not (gw.tracing.enabled and (gw.tracing.sample or tracing.TRACEPARENT in headers
                                    or tracing.TRACE_REQUEST_HEADER in headers)):
        return await submit()
    ctx = gw.tracing.decide(headers, wants_trace(headers))
    if ctx is None:
        return await submit()
    span = gw.tracing.span("gateway.batch", ctx, workspace,
                           attributes={"burst.app": app, "burst.function": fn})
    token = tracing.outgoing.set(tracing.headers_of(span))
    try:
        made = await submit()
        span.set_attribute("burst.calls", len(made))
        if made:
            span.set_attribute("burst.first_call_id", made[0][0].call_id)
            span.set_attribute("burst.last_call_id", made[-1][0].call_id)
        return made
    finally:
        tracing.outgoing.reset(token)
        span.end()


@router.post("/v1/traces", tags=["traces"])
async def send_spans(request: Request, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Spans the SDK made for its traced calls (``[{"trace_id", "span_id",
    "parent_id", "name", "service", "start", "end", "call_id"}]``, times in seconds since
    the epoch): kept with the call's other spans, in the caller's workspace."""
    body = await request.body()
    try:
        spans = tracing.spans_json_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed spans: {e}") from None
    if len(spans) > MAX_SENT_SPANS:
        raise InvalidError(f"{len(spans)} spans in one request: send at most {MAX_SENT_SPANS}")
    for s in spans:
        if s.call_id and not valid_call_id(s.call_id):  # ("": a span of many calls, a map's)
            raise InvalidError(f"span {s.name!r}: invalid call id {s.call_id!r}")
        if not (tracing.valid_id(s.trace_id, 32) and tracing.valid_id(s.span_id, 16)
                and (not s.parent_id or tracing.valid_id(s.parent_id, 16))):
            raise InvalidError(f"span {s.name!r}: trace_id must be 32 and span_id/parent_id "
                               "16 lowercase hex digits, not all zero")
        if not 0 < s.start <= s.end:
            raise InvalidError(f"span {s.name!r}: start {s.start} must be > 0 and <= end {s.end}")
        s.service = "sdk"
    gw.tracing.add_records(spans, p.workspace)
    return {"accepted": len(spans)}


async def spans_of(gw: Gateway, workspace: str, call_id: str) -> list[tracing.SpanRecord]:
    """The kept spans of ``workspace``'s call ``call_id`` (at most MAX_SPANS_PER_CALL),
    with those of its trace that are no single call's but belong to it (the map and page
    it came in, the relay that made it, the relays of calls it made:
    :func:`burst_core.tracing.related`)."""
    own = await _kept(gw, tracing.subject(workspace, call_id))
    for trace_id in sorted({s.trace_id for s in own})[:4]:
        shared = await _kept(gw, tracing.subject(workspace, trace_id))
        own += tracing.related(own, shared)
    own.sort(key=lambda s: (s.start, s.end))
    return own


async def _kept(gw: Gateway, subject: str) -> list[tracing.SpanRecord]:
    out: list[tracing.SpanRecord] = []
    seq = 0
    while len(out) < tracing.MAX_SPANS_PER_CALL:
        try:
            raw = await gw.js.get_msg(STREAM_TRACES, seq=seq + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        assert raw.seq is not None
        seq = raw.seq
        try:
            out.append(tracing.span_decoder.decode(raw.data or b""))
        except msgspec.DecodeError:
            continue
    return out


@router.get("/v1/calls/{call_id}/trace", tags=["traces"])
async def call_trace(call_id: str, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> JSON:
    """The spans kept for a traced call (``spans``: trace and span ids, parent id, name,
    service, start and end in seconds since the epoch, attributes), oldest first. 404 for
    a call that was not traced, whose trace expired, or that is another workspace's."""
    if not (valid_call_id(call_id) or valid_web_request_id(call_id)):
        raise InvalidError(f"invalid call id {call_id!r}: expected fc- (a call) or wr- (a "
                           "web request) and 32 hex digits")
    spans = await spans_of(gw, p.workspace, call_id)
    if not spans:
        raise NotFoundError(f"no trace of call {call_id!r} in workspace {p.workspace!r} "
                            "(a call is traced when sampled or asked for, e.g. "
                            "`burst run --trace`; traces are kept "
                            f"{Topology().trace_retention / 3600:g} h)")
    return JSON({"call_id": call_id, "spans": [
        {f: getattr(s, f) for f in s.__struct_fields__} for s in spans]})
