"""Usage reports, read from the ledger billing saves (the gateway never calls billing)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query

from burst.exception import InvalidError
from burst_core import ledger
from burst_gateway.auth import Principal, principal
from burst_gateway.state import GatewayDep

router = APIRouter()


@router.get("/v1/billing/report", tags=["billing"])
async def billing_report(
    gw: GatewayDep,
    by: Literal["app", "function", "resource", "day"] = Query(
        "app", description="Group rows by app, function, resource or UTC day."),
    since: str | None = Query(None, description="Only usage from this UTC day (YYYY-MM-DD)."),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """Container-seconds and cost of the caller's workspace, per app, function, resource
    or day; ``total`` is the sum over the same records."""
    try:
        since = ledger.check_since(since)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    snap = await ledger.load_snapshot(gw.js)
    rows = ledger.report(snap, p.workspace, by=by, since=since)
    return {
        "workspace": p.workspace, "by": by, "since": since, "rows": rows,
        "total": ledger.workspace_total(snap, p.workspace, since=since),
        "ledger_seq": snap.seq,
        "ledger_age": round(time.time() - snap.updated_at, 3) if snap.updated_at else None,
    }
