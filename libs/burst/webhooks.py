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


class Verifier:
    """:func:`verify` plus the dedupe a receiver owes: each delivery id is accepted once.

    A delivery seen before (a replay by whoever captured it, or Burst's own retry of one
    whose answer was lost) raises :class:`WebhookVerificationError`, so the event is acted
    on once. Ids are remembered for ``remember`` seconds (default: a day, beyond Burst's
    retry schedule), at most ``max_ids`` of them (oldest forgotten first). Thread-safe.

    Example::

        verifier = Verifier(secret)

        def handle(body: bytes, headers) -> int:
            try:
                event = verifier.verify(body, headers)
            except WebhookVerificationError:
                return 400
            act_on(event)
            return 204
    """

    def __init__(self, secret: str, tolerance: float = 300, remember: float = 86400.0,
                 max_ids: int = 100_000) -> None:
        if not tolerance > 0:
            raise InvalidError(f"tolerance={tolerance!r}: must be > 0 seconds")
        if not remember >= tolerance:
            raise InvalidError(f"remember={remember!r}: must be at least the tolerance "
                               f"({tolerance} s), or a replay within it would pass")
        if max_ids < 1:
            raise InvalidError(f"max_ids={max_ids!r}: must be at least 1")
        _key(secret)  # a malformed secret fails here, not on the first delivery
        self.secret, self.tolerance = secret, tolerance
        self.remember, self.max_ids = remember, max_ids
        self._seen: dict[str, float] = {}  # delivery id -> when it may be forgotten
        import threading

        self._lock = threading.Lock()

    def verify(self, payload: bytes | str, headers: Mapping[str, str],
               now: float | None = None) -> Any:
        """The delivery's JSON body, once per delivery id; else raises
        :class:`WebhookVerificationError`."""
        event = verify(payload, headers, self.secret, self.tolerance, now)
        msg_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        current = time.time() if now is None else now
        with self._lock:
            if self._seen.get(msg_id, 0.0) > current:
                raise WebhookVerificationError(
                    f"delivery {msg_id!r} was already accepted (a replay, or a retry of "
                    "one whose answer was lost)")
            for old in [k for k, t in self._seen.items() if t <= current]:
                del self._seen[old]
            while len(self._seen) >= self.max_ids:
                del self._seen[next(iter(self._seen))]
            self._seen[msg_id] = current + self.remember
        return event
