"""Usage reports, read from the ledger billing saves (the gateway never calls billing)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from burst_core import ledger

from burst_gateway.auth import Principal, principal

router = APIRouter()


@router.get("/v1/billing/report", tags=["billing"])
async def billing_report(
    request: Request,
    by: Literal["app", "function"] = Query("app", description="Group rows by app or function."),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """Container-seconds and cost of the caller's workspace, per app or per function."""
    snap = await ledger.load_snapshot(request.app.state.gw.js)
    rows = ledger.report(snap, p.workspace, by=by)
    return {
        "workspace": p.workspace, "by": by, "rows": rows,
        "total": ledger.workspace_total(snap, p.workspace),
        "ledger_seq": snap.seq,
        "ledger_age": round(time.time() - snap.updated_at, 3) if snap.updated_at else None,
    }
