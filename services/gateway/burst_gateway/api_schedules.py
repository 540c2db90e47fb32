"""Schedules of deployed apps: list, pause, resume (optionally backfilling missed ticks).

The gateway records the user's intent on the schedule's state in KV ``burst_schedules`` by
compare-and-set; the deciding scheduler acts on it (see the scheduler's ``schedules.py``).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Query
from nats.js.kv import KeyValue

from burst.exception import InvalidError, NotFoundError
from burst.wire import FunctionSpec
from burst_core import bus, names
from burst_core import schedules as ticks
from burst_core.schemas import DeploymentRecord, ScheduleState, ScheduleStateDecoder, encode
from burst_gateway.auth import Principal, principal
from burst_gateway.state import Gateway, GatewayDep
from burst_gateway.validate import check_name

router = APIRouter()


async def _kv(gw: Gateway) -> KeyValue:
    if gw.schedules_kv is None:
        gw.schedules_kv = await bus.ensure_kv(gw.js, names.KV_SCHEDULES)
    return gw.schedules_kv


async def _scheduled(gw: Gateway, p: Principal, app: str, fn: str) -> tuple[DeploymentRecord,
                                                                         FunctionSpec]:
    dep: DeploymentRecord | None = await gw.deployment(p.workspace, app)
    if dep is None:
        raise NotFoundError(f"app {app!r} is not deployed in workspace {p.workspace!r}")
    spec = next((f for f in dep.functions if f.name == fn), None)
    if spec is None:
        raise NotFoundError(f"app {app!r} has no function {fn!r}")
    if spec.schedule is None:
        raise InvalidError(f"function {fn!r} of app {app!r} has no schedule")
    return dep, spec


def _missed_count(spec: FunctionSpec, st: ScheduleState, cap: int = 10_000) -> int:
    assert spec.schedule is not None
    n = 0
    for first, last in st.missed:
        t = first
        while t <= last and n < cap:
            n += 1
            t = ticks.next_tick(spec.schedule, t)
    return n


def _view(dep: DeploymentRecord, spec: FunctionSpec, st: ScheduleState | None) -> dict[str, Any]:
    assert spec.schedule is not None
    s = spec.schedule
    after = st.last_tick_ms if st else int(dep.created_at * 1000)
    paused = bool(st and st.paused)
    return {
        "app": dep.app, "name": dep.name or dep.app, "ephemeral": dep.ephemeral,
        "function": spec.name, "schedule": ticks.describe(s),
        "cron": s.cron or None, "timezone": s.timezone if s.cron else None,
        "period": s.period or None, "paused": paused,
        "next_tick_at": None if paused else ticks.next_tick(s, after) / 1000,
        "last_tick_at": (st.last_tick_ms / 1000) if st else None,
        "fired": st.fired if st else 0,
        "last_fired_at": (st.last_fired_at or None) if st else None,
        "last_call_id": (st.last_call_id or None) if st else None,
        "missed": _missed_count(spec, st) if st else 0,
        "backfill_pending": bool(st and st.backfill),
        # Ticks not fired because a hard budget covering the function was spent.
        "skipped": st.skipped if st else 0,
        "last_skipped_at": (st.last_skipped_at or None) if st else None,
        "last_skipped_tick_at": (st.last_skipped_tick_ms / 1000 or None) if st else None,
        "last_skipped_reason": (st.last_skipped_reason or None) if st else None,
    }


@router.get("/v1/schedules", tags=["schedules"])
async def list_schedules(gw: GatewayDep, app: str | None = Query(None),
                         p: Principal = Depends(principal)) -> dict[str, Any]:
    """The schedules of the workspace's apps, ephemeral runs included (or of one ``app``,
    by name or by a run's id)."""
    if app is not None:
        check_name("app", app)
    kv = await _kv(gw)
    out = []
    for dep in gw.deployments_of(p.workspace):
        if app is not None and app not in (dep.app, dep.name):
            continue
        for spec in dep.functions:
            if spec.schedule is None:
                continue
            raw, _ = await bus.kv_get(kv, names.function_key(dep.workspace, dep.app, spec.name))
            out.append(_view(dep, spec, ScheduleStateDecoder.decode(raw) if raw else None))
    return {"schedules": out}


async def _change(kv: KeyValue, key: str, dep: DeploymentRecord,
                  change: Any) -> ScheduleState:
    written: list[ScheduleState] = []

    def mutate(raw: bytes | None) -> bytes | None:
        written.clear()
        st = (ScheduleStateDecoder.decode(raw) if raw is not None
              else ScheduleState(fn_key=key, last_tick_ms=int(dep.created_at * 1000)))
        new = change(st)
        written.append(new)
        return None if new == st and raw is not None else encode(new)

    await bus.kv_cas(kv, key, mutate)
    return written[0]


@router.post("/v1/apps/{app}/functions/{fn}/schedule/pause", tags=["schedules"])
async def pause(app: str, fn: str, gw: GatewayDep,
                p: Principal = Depends(principal)) -> dict[str, Any]:
    """Stop a schedule's ticks until it is resumed (ticks due meanwhile are missed)."""
    dep, spec = await _scheduled(gw, p, app, fn)
    now = time.time()

    def change(st: ScheduleState) -> ScheduleState:
        if st.paused:
            return st
        return msgspec.structs.replace(st, paused=True, paused_at=now)

    st = await _change(await _kv(gw), names.function_key(p.workspace, app, fn), dep, change)
    return _view(dep, spec, st)


@router.post("/v1/apps/{app}/functions/{fn}/schedule/resume", tags=["schedules"])
async def resume(app: str, fn: str, gw: GatewayDep,
                 backfill: bool = Query(False, description="Also fire, once each, the ticks "
                                        "missed while paused or while the cluster was down."),
                 p: Principal = Depends(principal)) -> dict[str, Any]:
    """Restart a paused schedule from the next tick; with ``backfill`` fire the missed
    ticks too."""
    dep, spec = await _scheduled(gw, p, app, fn)
    now = time.time()

    def change(st: ScheduleState) -> ScheduleState:
        new = st
        if st.paused:
            new = msgspec.structs.replace(new, paused=False, paused_at=0.0, resumed_at=now)
        if backfill:
            new = msgspec.structs.replace(new, backfill=True)
        return new

    st = await _change(await _kv(gw), names.function_key(p.workspace, app, fn), dep, change)
    return _view(dep, spec, st)
