"""Verify Burst's webhook deliveries in your receiver (standard library only).

Burst signs every delivery the Standard Webhooks way (https://www.standardwebhooks.com):

- ``webhook-id``: the delivery's id, the same on every retry (dedupe on it);
- ``webhook-timestamp``: seconds since the epoch when this attempt was sent;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed
  with the endpoint's secret (``whsec_<base64 key>``, shown once by ``burst webhook add``);
  several space-separated signatures may be present (during a secret rotation).

Example (any web framework; ``body`` must be the raw bytes received)::

    from burst.webhooks import verify, WebhookVerificationError

    try:
        event = verify(body, request.headers, secret)
    except WebhookVerificationError:
        return 400
    if event["type"] == "budget.exceeded":
        page_someone(event["data"])
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from burst.exception import Error, InvalidError

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(Error):
    """The delivery is not authentic or too old: reject it."""

    type = InvalidError.type


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise WebhookVerificationError("malformed secret: expected whsec_<base64>") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery attempt."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three signature headers for sending ``body`` now."""
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body)}


def verify(payload: bytes | str, headers: Mapping[str, str], secret: str,
           tolerance: float = 300, now: float | None = None) -> Any:
    """Check a delivery and return its JSON body, or raise :class:`WebhookVerificationError`.

    ``headers`` may use any letter case. A timestamp more than ``tolerance`` seconds from
    now (either way) is refused, so a captured delivery cannot be replayed later.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    low = {k.lower(): v for k, v in headers.items()}
    msg_id = low.get("webhook-id")
    ts_raw = low.get("webhook-timestamp")
    sigs = low.get("webhook-signature")
    if not msg_id or not ts_raw or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or "
                                       "webhook-signature header")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise WebhookVerificationError(f"invalid webhook-timestamp {ts_raw!r}") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp {ts} is {current - ts:+.0f} s from now (tolerance {tolerance} s)")
    expected = sign(secret, msg_id, ts, body).encode()
    for sig in sigs.split():
        version, _, _ = sig.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected):
            try:
                return json.loads(body)
            except ValueError:
                raise WebhookVerificationError("the body is not JSON") from None
    raise WebhookVerificationError("no matching signature (wrong secret, or altered body)")
