"""Webhook endpoints (KV) and their delivery log; billing delivers (see burst_billing)."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from burst.exception import InvalidError, NotFoundError
from burst.webhooks import new_secret
from burst_core import alerts, budgets, bus, names, sealing
from burst_core.schemas import (
    WebhookEndpoint,
    WebhookEndpointDecoder,
    WebhookLogEntryDecoder,
    encode,
)
from burst_gateway.auth import Principal, principal
from burst_gateway.state import GatewayDep
from burst_gateway.validate import check_text

router = APIRouter()
SUBSCRIBABLE = [e for e in alerts.EVENT_TYPES if e != "webhook.test"]


class EndpointIn(BaseModel):
    url: str = Field(..., description="http(s) URL that receives signed POSTs.")
    events: list[str] = Field(..., min_length=1, description=f"Any of {SUBSCRIBABLE}.")
    description: str = ""


def _public(ep: WebhookEndpoint) -> dict[str, Any]:
    return {"id": ep.endpoint_id, "url": ep.url, "events": ep.events,
            "description": ep.description, "created_at": ep.created_at}


async def _endpoint(js: Any, p: Principal, endpoint_id: str) -> WebhookEndpoint:
    kv = await js.key_value(names.KV_WEBHOOKS)
    raw = None
    if endpoint_id.startswith("ep_") and endpoint_id[3:].isalnum():
        raw, _ = await bus.kv_get(kv, names.webhook_key(p.workspace, endpoint_id))
    if raw is None:
        raise NotFoundError(f"no webhook {endpoint_id!r} in workspace {p.workspace!r}")
    return WebhookEndpointDecoder.decode(raw)


@router.post("/v1/webhooks", tags=["webhooks"])
async def add_webhook(gw: GatewayDep, body: EndpointIn,
                      p: Principal = Depends(principal)) -> dict[str, Any]:
    """Add an endpoint; the answer holds its signing secret, shown only this once."""
    js = gw.js
    await budgets.ensure(js)
    check_text("url", body.url)
    check_text("description", body.description)
    u = urllib.parse.urlsplit(body.url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InvalidError(f"webhook url {body.url!r}: use an http:// or https:// URL")
    bad = [e for e in body.events if e not in SUBSCRIBABLE]
    if bad:
        raise InvalidError(f"unknown event {bad[0]!r}: use any of {', '.join(SUBSCRIBABLE)}")
    secret = new_secret()
    # Stored sealed with the key in $BURST_HOME: the NATS store never holds the secret.
    sealed = sealing.for_home(gw.settings.home).seal(secret)
    ep = WebhookEndpoint(endpoint_id="ep_" + uuid.uuid4().hex[:16], workspace=p.workspace,
                         url=body.url, events=sorted(set(body.events)), secret=sealed,
                         created_at=time.time(), description=body.description)
    kv = await js.key_value(names.KV_WEBHOOKS)
    await kv.put(names.webhook_key(p.workspace, ep.endpoint_id), encode(ep))
    return {**_public(ep), "secret": secret}


@router.get("/v1/webhooks", tags=["webhooks"])
async def list_webhooks(gw: GatewayDep, p: Principal = Depends(principal)) -> dict[str, Any]:
    js = gw.js
    await budgets.ensure(js)
    return {"workspace": p.workspace,
            "webhooks": [_public(e) for e in await alerts.endpoints(js, p.workspace)]}


@router.delete("/v1/webhooks/{endpoint_id}", tags=["webhooks"])
async def remove_webhook(gw: GatewayDep, endpoint_id: str,
                         p: Principal = Depends(principal)) -> dict[str, Any]:
    js = gw.js
    ep = await _endpoint(js, p, endpoint_id)
    await (await js.key_value(names.KV_WEBHOOKS)).delete(
        names.webhook_key(p.workspace, ep.endpoint_id))
    return {"id": ep.endpoint_id, "removed": True}


@router.post("/v1/webhooks/{endpoint_id}/test", tags=["webhooks"])
async def test_webhook(gw: GatewayDep, endpoint_id: str,
                       p: Principal = Depends(principal)) -> dict[str, Any]:
    """Queue a ``webhook.test`` event for this endpoint (delivered like any other)."""
    js = gw.js
    ep = await _endpoint(js, p, endpoint_id)
    did = await alerts.deliver_to(js, ep, "webhook.test", "test-" + uuid.uuid4().hex,
                                  {"message": "a test delivery from Burst"})
    return {"id": ep.endpoint_id, "delivery_id": did}


@router.get("/v1/webhooks/deliveries", tags=["webhooks"])
async def deliveries(gw: GatewayDep, endpoint: str | None = Query(None),
                     limit: int = Query(50, ge=1, le=1000),
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """The delivery log, newest first (kept for a week)."""
    js = gw.js
    await budgets.ensure(js)
    kv = await js.key_value(names.KV_WEBHOOK_LOG)
    rows = [WebhookLogEntryDecoder.decode(v)
            for v in (await alerts.kv_values(kv, p.workspace)).values()]
    rows = [r for r in rows if endpoint is None or r.endpoint_id == endpoint]
    rows.sort(key=lambda r: (r.created_at, r.delivery_id), reverse=True)
    return {"workspace": p.workspace, "deliveries": [
        {"id": r.delivery_id, "endpoint": r.endpoint_id, "event": r.event_type, "url": r.url,
         "status": r.status, "attempts": r.attempts, "last_status_code": r.last_status_code,
         "last_error": r.last_error, "created_at": r.created_at, "updated_at": r.updated_at}
        for r in rows[:limit]]}
