"""Budgets: set, list and clear (stored in KV; billing evaluates them, see burst_billing)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from burst.exception import InvalidError, NotFoundError
from burst_core import alerts, budgets, bus, names
from burst_core.schemas import Budget, BudgetDecoder, BudgetStateDecoder, encode
from burst_gateway.auth import Principal, principal
from burst_gateway.state import GatewayDep

router = APIRouter()


class BudgetIn(BaseModel):
    limit: float = Field(..., gt=0, allow_inf_nan=False, description="USD per period.")
    hard: bool = Field(False, description="Refuse calls and stop containers once spent.")
    alert_at: list[int] = Field(default_factory=list, description="Percent thresholds.")
    period: str = Field("month", description="'month', '<N>d' or 'YYYY-MM-DD..YYYY-MM-DD'.")


def _key(p: Principal, scope: str) -> str:
    try:
        return budgets.key(p.workspace, scope)
    except ValueError as e:
        raise InvalidError(str(e)) from None


async def _view(js: Any, b: Budget) -> dict[str, Any]:
    kv = await js.key_value(names.KV_BUDGET_STATE)
    raw, _ = await bus.kv_get(kv, budgets.key(b.workspace, b.scope))
    out: dict[str, Any] = {"scope": b.scope, "limit": b.limit, "hard": b.hard,
                           "alert_at": b.alert_at, "period": b.period,
                           "created_at": b.created_at, "state": None}
    if raw is not None:
        st = BudgetStateDecoder.decode(raw)
        out["state"] = {"period": st.period, "spend": st.spend, "exceeded": st.exceeded,
                        "fired": st.fired, "overshoot": st.overshoot,
                        "exceeded_at": st.exceeded_at or None, "updated_at": st.updated_at}
    return out


@router.put("/v1/budgets/{scope}", tags=["billing"])
async def set_budget(gw: GatewayDep, scope: str, body: BudgetIn,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Create or replace the budget of ``scope`` (``workspace``, ``<app>``, ``<app>.<fn>``)."""
    js = gw.js
    await budgets.ensure(js)
    key = _key(p, scope)
    try:
        period = budgets.check_period(body.period)
        alert_at = budgets.check_thresholds(body.alert_at)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    kv = await js.key_value(names.KV_BUDGETS)
    raw, _ = await bus.kv_get(kv, key)
    old = BudgetDecoder.decode(raw) if raw is not None else None
    # A changed period starts afresh; otherwise the period keeps its anchor.
    created = old.created_at if old is not None and old.period == period else time.time()
    b = Budget(workspace=p.workspace, scope=scope, limit=body.limit, hard=body.hard,
               alert_at=alert_at, period=period, created_at=created)
    await kv.put(key, encode(b))
    return await _view(js, b)


@router.get("/v1/budgets", tags=["billing"])
async def list_budgets(gw: GatewayDep, p: Principal = Depends(principal)) -> dict[str, Any]:
    """The workspace's budgets with billing's latest view of each (spend, exceeded)."""
    js = gw.js
    await budgets.ensure(js)
    kv = await js.key_value(names.KV_BUDGETS)
    found = dict(await alerts.kv_values(kv, p.workspace))
    raw, _ = await bus.kv_get(kv, names.budget_key(p.workspace))
    if raw is not None:
        found[p.workspace] = raw
    items = sorted((BudgetDecoder.decode(v) for v in found.values()), key=lambda b: b.scope)
    return {"workspace": p.workspace, "budgets": [await _view(js, b) for b in items]}


@router.delete("/v1/budgets/{scope}", tags=["billing"])
async def clear_budget(gw: GatewayDep, scope: str,
                       p: Principal = Depends(principal)) -> dict[str, Any]:
    """Remove a budget; a scope it had stopped reopens."""
    js = gw.js
    await budgets.ensure(js)
    key = _key(p, scope)
    kv = await js.key_value(names.KV_BUDGETS)
    raw, _ = await bus.kv_get(kv, key)
    if raw is None:
        raise NotFoundError(f"no budget on scope {scope!r} in workspace {p.workspace!r}")
    await kv.delete(key)
    await (await js.key_value(names.KV_BUDGET_STATE)).delete(key)
    return {"scope": scope, "cleared": True}
