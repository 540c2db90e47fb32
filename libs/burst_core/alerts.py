"""Events for webhooks: fan an event out to the subscribed endpoints as pending deliveries.

An event becomes one :class:`WebhookDelivery` per endpoint of its workspace subscribed to
its type, published to ``BURST_WEBHOOKS`` (work-queue retention: a delivery stays there
until billing's delivery consumer acks it, delivered or given up) with ``Nats-Msg-Id`` =
its delivery id, and a ``pending`` entry in the delivery log. The delivery id is derived
from the event id, so emitting the same event twice (a producer that crashed between
emitting and recording that it did) is deduplicated, by JetStream within its window and
by the delivery log after it.

Body (JSON): ``{"type", "id", "timestamp", "workspace", "data"}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import bus, logs, names
from burst_core.schemas import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointDecoder,
    WebhookLogEntry,
    encode,
)

log = logs.get("burst.alerts")

EVENT_ERROR_RATE = "function.error_rate_exceeded"
EVENT_RUNAWAY = "container.runaway_detected"

#: Every event type an endpoint may subscribe to.
EVENT_TYPES = ("budget.threshold_crossed", "budget.exceeded", EVENT_ERROR_RATE,
               EVENT_RUNAWAY, "webhook.test")


async def kv_values(kv: KeyValue, prefix: str) -> dict[str, bytes]:
    """Key -> value of every live key under ``prefix`` + '.' (see :func:`bus.kv_keys`)."""
    return await bus.kv_values(kv, prefix)


async def endpoints(js: JetStreamContext, workspace: str) -> list[WebhookEndpoint]:
    kv = await js.key_value(names.KV_WEBHOOKS)
    return sorted((WebhookEndpointDecoder.decode(v)
                   for v in (await kv_values(kv, workspace)).values()),
                  key=lambda e: e.endpoint_id)


def event_id(*parts: str) -> str:
    """A deterministic event id: the same occurrence always gets the same id."""
    return "evt_" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def delivery_id(event_id: str, endpoint_id: str) -> str:
    return "msg_" + hashlib.sha256(f"{event_id}/{endpoint_id}".encode()).hexdigest()[:32]


async def deliver_to(js: JetStreamContext, ep: WebhookEndpoint, event_type: str,
                     event_id: str, data: dict[str, Any], at: float | None = None) -> str:
    """Queue one event for one endpoint; returns the delivery id."""
    now = time.time() if at is None else at
    did = delivery_id(event_id, ep.endpoint_id)
    body = json.dumps({"type": event_type, "id": did, "timestamp": now,
                       "workspace": ep.workspace, "data": data},
                      separators=(",", ":"), sort_keys=True).encode()
    d = WebhookDelivery(delivery_id=did, endpoint_id=ep.endpoint_id, workspace=ep.workspace,
                        event_type=event_type, body=body, created_at=now)
    logkv = await js.key_value(names.KV_WEBHOOK_LOG)
    entry = WebhookLogEntry(delivery_id=did, endpoint_id=ep.endpoint_id,
                            workspace=ep.workspace, event_type=event_type, url=ep.url,
                            created_at=now, updated_at=now)
    try:  # create only: a repeated emit must not reset a finished delivery's log
        await logkv.create(names.webhook_log_key(ep.workspace, did), encode(entry))
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    await bus.publish(js, names.webhook_delivery_subject(ep.workspace, ep.endpoint_id),
                      encode(d), msg_id=did)
    return did


async def emit(js: JetStreamContext, workspace: str, event_type: str, event_id: str,
               data: dict[str, Any]) -> list[str]:
    """Queue ``event_type`` for every endpoint of ``workspace`` subscribed to it."""
    ids = []
    for ep in await endpoints(js, workspace):
        if event_type in ep.events:
            ids.append(await deliver_to(js, ep, event_type, event_id, data))
    log.info("event_emitted", workspace=workspace, type=event_type, event_id=event_id,
             deliveries=len(ids))
    return ids
