"""``--since`` of ``burst app logs`` and ``burst container logs``: a duration back from
now (``90s``, ``30m``, ``1h``, ``2d``, ``1w``; units may combine, ``1h30m``) or a moment
(ISO 8601, ``2026-12-04T17:00:00Z``; without a zone, UTC)."""

from __future__ import annotations

import datetime
import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

HELP = ("a duration back from now (90s, 30m, 1h, 2d, 1w, or combined: 1h30m) or an ISO "
        "8601 time (2026-12-04T17:00:00Z)")


def parse_since(text: str, now: float) -> float:
    """The moment (a Unix time) ``text`` names; ``ValueError`` naming it and the forms
    allowed when it is neither form, or lies in the future."""
    value = text.strip().lower()
    if value and re.fullmatch(r"(?:\d+(?:\.\d+)?[smhdw])+", value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        return now - seconds
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid --since {text!r}: use {HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    at = moment.timestamp()
    if at > now + 60:
        raise ValueError(f"invalid --since {text!r}: it is in the future")
    return at
