"""What the dashboard shows, read from the stores the API reads (one small function per
kind of data, so that each can move to a richer source, such as a logs or metrics store,
without touching the pages).

Every read is bounded: stream reads take at most ``dashboard_max_messages`` messages of
the last ``dashboard_window`` seconds, never a whole stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from burst_core import alerts, budgets, bus, ledger, names
from burst_core.schemas import (
    AgentHeartbeatDecoder,
    AgentRecordDecoder,
    BudgetDecoder,
    BudgetStateDecoder,
    CallRecord,
    LogLine,
    MeteringRecord,
    Output,
    WebhookLogEntryDecoder,
)
from burst_gateway import api_containers, api_logs
from burst_gateway.api_agents import agent_view
from burst_gateway.auth import Principal
from burst_gateway.state import Gateway

T = TypeVar("T")
_output = msgspec.msgpack.Decoder(Output)
_record = msgspec.msgpack.Decoder(CallRecord)
_metering = msgspec.msgpack.Decoder(MeteringRecord)
#: Seconds one fetch of a stream read waits for messages it was told are there.
_FETCH_WAIT = 2.0


async def read_stream(js: JetStreamContext, stream: str, subject: str, decode: Callable[[bytes], T],
                      limit: int, since: float = 0.0, start_time: float = 0.0) -> list[T]:
    """Up to ``limit`` decoded messages of ``stream`` on ``subject``, oldest first.

    Without ``start_time``: the last ``limit`` messages of the stream (of every subject)
    that match, those stored before ``since`` left out. With it: the first ``limit`` from
    that time on. Messages that do not decode are skipped."""
    try:
        info = await js.stream_info(stream)
    except Exception:
        return []
    state = info.state
    if state.messages == 0:
        return []
    cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, filter_subject=subject,
                         inactive_threshold=30.0, mem_storage=True, num_replicas=1)
    if start_time:
        cfg.deliver_policy = DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = datetime.datetime.fromtimestamp(start_time, datetime.UTC)
    else:
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = max(state.first_seq, state.last_seq - limit + 1)
    sub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    out: list[T] = []
    consumer = ""
    try:
        info_c = await sub.consumer_info()
        consumer, pending = info_c.name, info_c.num_pending
        while pending and len(out) < limit:
            try:
                msgs = await sub.fetch(min(256, limit - len(out)), timeout=_FETCH_WAIT)
            except TimeoutError:
                break
            for m in msgs:
                meta = m.metadata
                pending = meta.num_pending
                if since and meta.timestamp and meta.timestamp.timestamp() < since:
                    continue
                try:
                    out.append(decode(m.data))
                except (msgspec.DecodeError, ValueError):
                    continue
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if consumer:  # (else it goes by itself after its inactive_threshold)
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, consumer)
    return out


@dataclass
class Call:
    call_id: str
    app: str = ""
    function: str = ""
    status: str = "pending"
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    container_id: str = ""
    error: str = ""
    attempt: int = 1

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, self.finished_at - self.started_at)
        return None


@dataclass
class FunctionStats:
    app: str
    function: str
    calls: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    per_minute: list[int] = field(default_factory=list)

    def p(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[min(98, max(0, int(q * 100) - 1))]


def _settings(gw: Gateway) -> tuple[float, int]:
    s = gw.settings
    return s.dashboard_window, s.dashboard_max_messages


async def container_functions(gw: Gateway, workspace: str) -> dict[str, tuple[str, str]]:
    """container id -> (app, function) of ``workspace``'s containers: running ones from
    the agents' heartbeats, past ones from their metering records in the window."""
    window, limit = _settings(gw)
    out: dict[str, tuple[str, str]] = {}
    for m in await read_stream(gw.js, names.STREAM_METERING, f"burst.metering.{workspace}.>",
                               _metering.decode, limit, since=time.time() - window):
        out[m.container_id] = (m.app_id or m.app, m.function)
    for raw in (await bus.kv_items(gw.js, names.KV_HEARTBEATS)).values():
        for c in AgentHeartbeatDecoder.decode(raw).containers:
            ws, app, fn = names.split_function_key(c.fn_key)
            if ws == workspace:
                out[c.container_id] = (app, fn)
    return out


def _call_of(o: Output, where: dict[str, tuple[str, str]]) -> Call:
    app, fn = where.get(o.container_id, ("", ""))
    err = f"{o.error_type}: {o.error_message}" if o.error_type else o.error_message
    return Call(call_id=o.call_id, app=app, function=fn, status=o.status,
                started_at=o.started_at, finished_at=o.finished_at,
                container_id=o.container_id, error=err, attempt=o.attempt)


async def recent_calls(gw: Gateway, p: Principal) -> list[Call]:
    """The workspace's calls of the window, newest first: finished ones from their
    outputs, still running or waiting ones from their records."""
    window, limit = _settings(gw)
    since = time.time() - window
    # (transient calls' outputs and records apart, each stream read the same)
    outs, touts, recs, trecs, where = await asyncio.gather(
        read_stream(gw.js, names.STREAM_OUTPUTS, names.SUBJECTS_OUTPUTS, _output.decode,
                    limit, since=since),
        read_stream(gw.js, names.STREAM_TRANSIENT_OUTPUTS, names.SUBJECTS_TRANSIENT_OUTPUTS,
                    _output.decode, limit, since=since),
        read_stream(gw.js, f"KV_{names.KV_CALLS}", f"$KV.{names.KV_CALLS}.>", _record.decode,
                    limit, since=since),
        read_stream(gw.js, f"KV_{names.KV_CALLS_TRANSIENT}", f"$KV.{names.KV_CALLS_TRANSIENT}.>",
                    _record.decode, limit, since=since),
        container_functions(gw, p.workspace))
    outs = sorted([*outs, *touts], key=lambda o: o.finished_at)
    recs = [*recs, *trecs]
    calls: dict[str, Call] = {}
    for o in outs:
        if o.workspace == p.workspace:
            calls[o.call_id] = _call_of(o, where)  # the last attempt's output wins
    for r in recs:
        if r.workspace != p.workspace:
            continue
        c = calls.get(r.call_id)
        if c is None:
            calls[r.call_id] = Call(call_id=r.call_id, app=r.app, function=r.function,
                                    created_at=r.created_at, attempt=r.attempt)
        else:
            c.app, c.function, c.created_at = r.app, r.function, r.created_at
    return sorted(calls.values(), key=lambda c: c.finished_at or c.created_at, reverse=True)


async def call_detail(gw: Gateway, p: Principal, call_id: str) -> Call | None:
    """One call of the workspace (None: unknown, or another workspace's)."""
    rec = await gw.caller.record(call_id, p.workspace)
    if rec is None:
        return None
    outs = await read_stream(gw.js, names.outputs_stream(call_id), names.outputs_filter(call_id),
                             _output.decode, 64, start_time=rec.created_at - 1.0)
    outs = [o for o in outs if o.workspace == p.workspace]
    # A call answered within its synchronous wait has no record of its own: its
    # container says whose function it was.
    where = await container_functions(gw, p.workspace) if outs and not rec.app else {}
    if outs:
        call = _call_of(max(outs, key=lambda o: o.attempt), where)
    else:
        call = Call(call_id=call_id, attempt=rec.attempt)
    if rec.app:
        call.app, call.function = rec.app, rec.function
    call.created_at = rec.created_at
    return call


async def call_logs(gw: Gateway, p: Principal, call: Call) -> list[LogLine]:
    """The lines ``call`` printed and the platform events of it, as ``burst app logs
    --call`` reads them (the logs stream filtered by the call's id, from its creation on;
    at most ``dashboard_max_messages``, the newest)."""
    _, limit = _settings(gw)
    since = (call.created_at or call.started_at or time.time()) - 1.0
    q = api_logs.LogQuery(workspace=p.workspace, call_id=call.call_id, since=since)
    window = api_logs.LogWindow(gw, q.subject, q.since)
    try:
        await window.open()
        lines, _ = await api_logs.history(gw, q, window, limit)
    finally:
        await window.close()
    return lines


async def function_stats(gw: Gateway, p: Principal, calls: list[Call],
                         buckets: int = 30) -> list[FunctionStats]:
    """Per function of the workspace's apps: calls, errors, latency, and calls per
    minute over the last ``buckets`` minutes (for a chart)."""
    now = time.time()
    stats: dict[tuple[str, str], FunctionStats] = {}
    for dep in gw.deployments_of(p.workspace):
        for f in dep.functions:
            stats[(dep.name or dep.app, f.name)] = FunctionStats(dep.name or dep.app, f.name,
                                                                 per_minute=[0] * buckets)
    for c in calls:
        if not c.finished_at or not c.function:
            continue
        s = stats.setdefault((c.app, c.function),
                             FunctionStats(c.app, c.function, per_minute=[0] * buckets))
        s.calls += 1
        if c.status != "success":
            s.errors += 1
        if c.duration is not None:
            s.latencies.append(c.duration)
        ago = int((now - c.finished_at) // 60)
        if 0 <= ago < buckets:
            s.per_minute[buckets - 1 - ago] += 1
    return sorted(stats.values(), key=lambda s: (s.app, s.function))


async def containers(gw: Gateway, p: Principal) -> list[dict[str, Any]]:
    """Running containers as ``GET /v1/containers`` shows them (the caller's workspace's;
    an operator sees every one, with its agent)."""
    now = time.time()
    names_of = {d.app: d.name or d.app for d in gw.deployments_of(p.workspace)}
    out = []
    for agent_id, v in await api_containers.running(gw):
        ws = names.split_function_key(v.fn_key)[0]
        if ws != p.workspace and not p.operator:
            continue
        out.append({**api_containers.view(agent_id, v, p.operator, now, names_of),
                    "max_inputs": v.max_inputs})
    return sorted(out, key=lambda c: (c["workspace"], c["app"], c["function"],
                                      c["container_id"]))


async def agents(gw: Gateway) -> list[dict[str, Any]]:
    """Every agent as ``GET /v1/agents`` shows it, with its latest figures (CPU and
    memory in use, each GPU's utilisation and memory from NVML) under ``figures`` when
    it publishes them (operators only: the caller checks)."""
    now = time.time()
    beats = {k: AgentHeartbeatDecoder.decode(v)
             for k, v in (await bus.kv_items(gw.js, names.KV_HEARTBEATS)).items()}
    figures = {m.agent_id: m for m in gw.agent_figures.current()}
    out = []
    for key, raw in (await bus.kv_items(gw.js, names.KV_AGENTS)).items():
        a = agent_view(AgentRecordDecoder.decode(raw), beats.get(key), now)
        m = figures.get(a["agent_id"])
        a["figures"] = None if m is None else {
            "cpu_percent": m.cpu_percent, "memory_used_mb": m.memory_used_mb,
            "memory_total_mb": m.memory_total_mb,
            "gpus": {g.index: g for g in m.gpus}}
        out.append(a)
    return sorted(out, key=lambda a: a["agent_id"])


async def spend(gw: Gateway, p: Principal, days: int = 30) -> dict[str, Any]:
    """Spend per UTC day over the last ``days`` days, and the workspace's budgets with
    billing's latest view of each."""
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400))
    snap = await ledger.load_snapshot(gw.js)
    rows = ledger.report(snap, p.workspace, by="day", since=since)
    by_app = ledger.report(snap, p.workspace, by="app", since=since)
    await budgets.ensure(gw.js)
    kv = await gw.js.key_value(names.KV_BUDGETS)
    found = dict(await alerts.kv_values(kv, p.workspace))
    raw, _ = await bus.kv_get(kv, names.budget_key(p.workspace))
    if raw is not None:
        found[p.workspace] = raw
    state_kv = await gw.js.key_value(names.KV_BUDGET_STATE)
    out_budgets = []
    for b in sorted((BudgetDecoder.decode(v) for v in found.values()), key=lambda b: b.scope):
        st_raw, _ = await bus.kv_get(state_kv, budgets.key(b.workspace, b.scope))
        st = BudgetStateDecoder.decode(st_raw) if st_raw is not None else None
        out_budgets.append({"scope": b.scope, "limit": b.limit, "hard": b.hard,
                            "period": b.period, "spend": st.spend if st else 0.0,
                            "exceeded": bool(st and st.exceeded)})
    return {"days": rows, "apps": by_app, "budgets": out_budgets,
            "total": ledger.workspace_total(snap, p.workspace, since=since)["cost"]}


async def webhook_deliveries(gw: Gateway, p: Principal, limit: int = 100) -> list[dict[str, Any]]:
    """The workspace's webhook deliveries, newest first (the log keeps a week)."""
    await budgets.ensure(gw.js)
    kv = await gw.js.key_value(names.KV_WEBHOOK_LOG)
    rows = [WebhookLogEntryDecoder.decode(v)
            for v in (await alerts.kv_values(kv, p.workspace)).values()]
    rows.sort(key=lambda r: (r.created_at, r.delivery_id), reverse=True)
    return [{"id": r.delivery_id, "endpoint": r.endpoint_id, "event": r.event_type,
             "url": r.url, "status": r.status, "attempts": r.attempts,
             "code": r.last_status_code, "error": r.last_error, "at": r.created_at}
            for r in rows[:limit]]
