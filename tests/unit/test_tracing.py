"""Tracing's sampling, propagation and span records (burst_core.tracing), the gateway's
trace request header, and the CLI's span tree."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from opentelemetry import trace

from burst.cli.trace import tree_of
from burst.exception import InvalidError
from burst_core import tracing
from burst_gateway.api_traces import wants_trace

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class FakeNC:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, **_: Any) -> None:
        self.published.append((subject, data))


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_sample_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match=rf"BURST_TRACE_SAMPLE={share}.*from 0"):
        tracing.check_sample(share)


async def test_nothing_is_traced_by_default_and_a_request_or_share_traces() -> None:
    off = tracing.Tracing("t", FakeNC())
    assert off.decide({}) is None
    assert off.decide({"traceparent": f"00-{TRACE}-{PARENT}-00"}) is None  # not sampled
    assert off.decide({}, forced=True) is not None
    ctx = off.decide({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert ctx is not None
    sc = trace.get_current_span(ctx).get_span_context()
    assert format(sc.trace_id, "032x") == TRACE and format(sc.span_id, "016x") == PARENT
    assert tracing.Tracing("t", FakeNC(), sample=1.0).decide({}) is not None
    with pytest.raises(ValueError, match="BURST_TRACE_SAMPLE"):
        tracing.Tracing("t", FakeNC(), sample=2.0)
    # BURST_TRACING=0: nothing is traced, whoever asks.
    disabled = tracing.Tracing("t", FakeNC(), sample=1.0, enabled=False)
    assert disabled.decide({"traceparent": f"00-{TRACE}-{PARENT}-01"}, forced=True) is None


async def test_spans_of_a_call_go_to_its_subject_with_parents() -> None:
    nc = FakeNC()
    t = tracing.Tracing("gateway", nc)
    ctx = t.decide({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    span = t.span("gateway.call", ctx, "ws1", "fc-1", start=100.0)
    headers = tracing.headers_of(span, "fc-1")
    assert headers["traceparent"].startswith(f"00-{TRACE}-") and headers["traceparent"][-2:] == "01"
    child = t.span("agent.input", t.incoming(headers), "ws1", "fc-1", start=100.5)
    child.end(int(101e9))
    span.end(int(102e9))
    t.span("gateway.batch", ctx, "ws1").end()  # no single call's: kept under its trace
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [s for s, _ in nc.published] == ["burst.traces.ws1.fc-1"] * 2 + [
        f"burst.traces.ws1.{TRACE}"]
    child_rec, parent_rec, _ = (tracing.span_decoder.decode(d) for _, d in nc.published)
    assert (parent_rec.name, parent_rec.parent_id, parent_rec.trace_id) == (
        "gateway.call", PARENT, TRACE)
    assert child_rec.parent_id == parent_rec.span_id
    assert (child_rec.start, child_rec.end, child_rec.call_id) == (100.5, 101.0, "fc-1")
    assert "burst.workspace" not in child_rec.attributes
    t.shutdown()


def _rec(span_id: str, parent_id: str, name: str) -> tracing.SpanRecord:
    return tracing.SpanRecord(trace_id=TRACE, span_id=span_id, parent_id=parent_id,
                              name=name, service="x", start=1.0, end=2.0)


def test_a_calls_trace_takes_in_its_ancestors_and_its_childrens_shared_spans() -> None:
    """Spans of no single call (a map, its pages, relays from containers) belong to a
    call's trace when they are its ancestors or its spans' children; others do not."""
    own = [_rec("a1", "b1", "agent.input"), _rec("a2", "a1", "shim.function")]
    shared = [_rec("b1", "m1", "gateway.batch"), _rec("b2", "m1", "gateway.batch"),
              _rec("m1", "", "sdk.map"), _rec("r1", "a1", "agent.relay"),
              _rec("r2", "zz", "agent.relay")]
    got = {s.span_id for s in tracing.related(own, shared)}
    assert got == {"b1", "m1", "r1"}  # not the other page, not another call's relay
    # A cycle (forged parents) ends.
    loop = [_rec("c1", "c2", "x"), _rec("c2", "c1", "y")]
    assert {s.span_id for s in tracing.related([_rec("o", "c1", "z")], loop)} == {"c1", "c2"}


def test_the_trace_request_header() -> None:
    assert not wants_trace({})
    assert wants_trace({"x-burst-trace": "1"}) and wants_trace({"x-burst-trace": "True"})
    assert not wants_trace({"x-burst-trace": "0"})
    with pytest.raises(InvalidError, match="X-Burst-Trace: 'sure'"):
        wants_trace({"x-burst-trace": "sure"})


def test_the_cli_tree_nests_by_parent_and_keeps_orphans_as_roots() -> None:
    def span(sid: str, parent: str, start: float) -> dict[str, Any]:
        return msgspec.to_builtins(tracing.SpanRecord(
            trace_id=TRACE, span_id=sid, parent_id=parent, name=sid, service="s",
            start=start, end=start + 1)) | {"parent_id": parent}

    spans = [span("c2", "a", 3), span("a", "", 1), span("c1", "a", 2), span("o", "gone", 0)]
    forest = tree_of(spans)
    assert [r[0]["span_id"] for r in forest] == ["o", "a"]
    assert [c[0]["span_id"] for c in forest[1][1]] == ["c1", "c2"]


def test_trace_retention_setting() -> None:
    from burst_core.bus.topology import trace_retention

    assert trace_retention({}) == 86400.0
    assert trace_retention({"BURST_TRACE_RETENTION": "60"}) == 60.0
    for bad in ("soon", "0", "-5", "inf"):
        with pytest.raises(ValueError, match=f"BURST_TRACE_RETENTION='{bad}'.*seconds"):
            trace_retention({"BURST_TRACE_RETENTION": bad})


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_trace_attach_timeout_must_be_above_0(value: str) -> None:
    from burst_core import settings
    from burst_scheduler.settings import SchedulerSettings

    with pytest.raises(ValueError, match=rf"BURST_TRACE_ATTACH_TIMEOUT={value}.*above 0"):
        settings.load(SchedulerSettings, {"BURST_TRACE_ATTACH_TIMEOUT": value})


async def test_an_untraced_message_parses_no_context_and_makes_no_span(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path (the gateway's submit, the scheduler's signal, the agent's order and
    input, the relay): headers with no ``traceparent`` are never handed to the parser."""
    def parse(**_: Any) -> Any:
        raise AssertionError("a trace context was parsed")

    monkeypatch.setattr(tracing._propagator, "extract", parse)
    nc = FakeNC()
    t = tracing.Tracing("agent", nc)
    for headers in (None, {}, {"Nats-Msg-Id": "in-1"}, {"x-burst-trace": "0"}):
        assert t.incoming(headers) is None
        assert t.decide(headers) is None
    await asyncio.sleep(0)
    assert nc.published == []
    t.shutdown()


async def test_a_traced_call_gets_a_containers_start_only_if_it_waited_for_it() -> None:
    """The agent's answer to the scheduler (placed before the call's signal came): the
    start is the call's only if the container was not ready when the call was accepted.
    Heartbeats lag, so the scheduler's view cannot say this (a warm call's trace had a
    placement wait for the container that had just served the cold call)."""
    from types import SimpleNamespace

    from burst import wire
    from burst_agent.container import Container

    started: list[str] = []

    def box(state: str, ready_at: float | None, trace: Any = None) -> Any:
        c = SimpleNamespace(state=state, trace=trace, trace_call="", _start_times=None)
        if ready_at is not None:
            c._start_times = (1.0, 2.0, wire.Ready(pid=1, entered_at=ready_at))
        c._trace_start = lambda: started.append(c.trace_call)
        return c

    ctx = tracing.Tracing("agent", FakeNC()).decide({}, forced=True)
    assert ctx is not None
    attach = Container.attach_trace
    assert attach(box("starting", None), ctx, "fc-a", 100.0) is True  # still starting
    assert started == []  # (its spans come when it is ready)
    assert attach(box("idle", 101.0), ctx, "fc-b", 100.0) is True  # ready after the call
    assert started == ["fc-b"]
    assert attach(box("idle", 99.0), ctx, "fc-c", 100.0) is False  # ready before: warm
    assert attach(box("starting", None, trace=ctx), ctx, "fc-d", 100.0) is False  # taken
    assert attach(box("stopping", None), ctx, "fc-e", 100.0) is False
    assert started == ["fc-b"]
