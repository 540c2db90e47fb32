"""Budgets: scopes, periods, and the KV buckets and stream billing's alerts use.

Shared by billing (which evaluates spend), the gateway (which stores budgets and refuses
calls in an exceeded scope) and the scheduler (which stops that scope's containers).

- scope: ``workspace``, ``<app>`` or ``<app>.<function>`` (KV key :func:`names.budget_key`);
- period: ``month`` (the UTC calendar month, the default), ``<N>d`` (successive N-day
  windows from the budget's creation day) or ``YYYY-MM-DD..YYYY-MM-DD`` (fixed, inclusive).

Spend is counted over the UTC days of the period from the ledger's per-day lines.

Example::

    scope_parts("shop.resize")            # ("shop", "resize")
    window("month", created_at=0, now=t)  # ("2026-01", "2026-01-01", "2026-01-31")
"""

from __future__ import annotations

import calendar
import re
import time

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from burst_core import bus, names

WORKSPACE_SCOPE = "workspace"
EVENT_THRESHOLD = "budget.threshold_crossed"
EVENT_EXCEEDED = "budget.exceeded"
_N_DAYS = re.compile(r"^([1-9][0-9]{0,3})d$")
_DATE = "%Y-%m-%d"
DAY = 86400


def scope_parts(scope: str) -> tuple[str | None, str | None]:
    """``(app, function)`` of a scope (None for the parts it does not name), or ValueError."""
    if scope == WORKSPACE_SCOPE:
        return None, None
    parts = scope.split(".")
    if len(parts) > 2:
        raise ValueError(f"budget scope {scope!r}: use 'workspace', '<app>' or "
                         "'<app>.<function>'")
    for kind, part in zip(("app", "function"), parts, strict=False):
        names.check_ident(kind, part)
    return parts[0], parts[1] if len(parts) == 2 else None


def key(workspace: str, scope: str) -> str:
    """The KV key of a budget (and of its state)."""
    app, fn = scope_parts(scope)
    return names.budget_key(workspace, app, fn)


def _day(t: float) -> str:
    return time.strftime(_DATE, time.gmtime(t))


def _parse_day(s: str, period: str) -> int:
    try:
        return calendar.timegm(time.strptime(s, _DATE)) // DAY
    except ValueError:
        raise ValueError(f"budget period {period!r}: {s!r} is not a date YYYY-MM-DD") from None


def check_period(period: str) -> str:
    """``period`` if valid, else ValueError naming it and what is accepted."""
    if period == "month" or _N_DAYS.match(period):
        return period
    first, sep, last = period.partition("..")
    if not sep:
        raise ValueError(f"budget period {period!r}: use 'month', '<N>d' (e.g. '7d') or "
                         "'YYYY-MM-DD..YYYY-MM-DD'")
    if _parse_day(first, period) > _parse_day(last, period):
        raise ValueError(f"budget period {period!r}: the first day is after the last")
    return period


def window(period: str, created_at: float, now: float) -> tuple[str, str, str]:
    """``(period id, first day, last day)`` of the period that contains ``now``."""
    if period == "month":
        tm = time.gmtime(now)
        days = calendar.monthrange(tm.tm_year, tm.tm_mon)[1]
        ym = f"{tm.tm_year:04d}-{tm.tm_mon:02d}"
        return ym, f"{ym}-01", f"{ym}-{days:02d}"
    m = _N_DAYS.match(period)
    if m:
        n = int(m.group(1))
        anchor = int(created_at // DAY)
        today = int(now // DAY)
        start = anchor + max(0, (today - anchor) // n) * n
        first, last = _day(start * DAY), _day((start + n - 1) * DAY)
        return f"{first}..{last}", first, last
    first, _, last = check_period(period).partition("..")
    return period, first, last


def check_thresholds(alert_at: list[int]) -> list[int]:
    for t in alert_at:
        if not 1 <= t <= 1000:
            raise ValueError(f"alert threshold {t!r}%: must be between 1 and 1000")
    return sorted(set(alert_at))


async def ensure(js: JetStreamContext, replicas: int | None = None,
                 log_retention: float = 7 * bus.DAY) -> None:
    """Create the budget, webhook and alert buckets and the pending-deliveries stream
    (``replicas`` default: ``BURST_REPLICAS``). Idempotent."""
    if replicas is None:
        replicas = bus.default_replicas()
    for bucket in (names.KV_BUDGETS, names.KV_BUDGET_STATE, names.KV_WEBHOOKS):
        await bus.ensure_kv(js, bucket, replicas=replicas)
    await bus.ensure_kv(js, names.KV_WEBHOOK_LOG, ttl=log_retention, replicas=replicas)
    # Fired-alert marks: a runaway's mark outlives its container; an error-rate state is
    # rewritten at each crossing. Expiry only bounds what containers long gone leave behind.
    await bus.ensure_kv(js, names.KV_ALERT_STATE, ttl=30 * bus.DAY, replicas=replicas)
    cfg = StreamConfig(
        name=names.STREAM_WEBHOOKS, subjects=[names.SUBJECTS_WEBHOOKS],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        num_replicas=replicas, max_age=30 * bus.DAY, duplicate_window=600.0,
    )
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError as e:
        if e.err_code != 10058:
            raise
