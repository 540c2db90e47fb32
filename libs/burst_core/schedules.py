"""Tick arithmetic of schedules, shared by the scheduler (which fires ticks) and the gateway
(which shows the next one). Times are integer milliseconds since the epoch.

- ``Period(p)``: ticks at ``anchor + k·p`` for k ≥ 1, the anchor being the first deploy
  (the ``last_tick_ms`` a schedule's state starts with), so every tick is exact and the
  same on every replica.
- ``Cron(expr, timezone)``: the times ``croniter`` yields, computed in that timezone (so
  ``0 8 * * 1`` stays at 08:00 local time across daylight saving changes).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache

from burst.wire import Schedule


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _period_ms(s: Schedule) -> int:
    return max(1, round(s.period * 1000))


def _cron(s: Schedule, start_ms: int) -> object:
    from croniter import croniter

    return croniter(s.cron, datetime.fromtimestamp(start_ms / 1000, _zone(s.timezone)))


def next_tick(s: Schedule, after_ms: int) -> int:
    """The first tick strictly after ``after_ms``."""
    if not s.cron:
        return after_ms + _period_ms(s)
    nxt: datetime = _cron(s, after_ms).get_next(datetime)  # type: ignore[attr-defined]
    return round(nxt.timestamp() * 1000)


def latest_tick(s: Schedule, after_ms: int, until_ms: int) -> int | None:
    """The last tick in ``(after_ms, until_ms]`` (None: there is none)."""
    if until_ms <= after_ms:
        return None
    if not s.cron:
        p = _period_ms(s)
        k = (until_ms - after_ms) // p
        return after_ms + k * p if k else None
    # croniter's previous tick is strictly before its start: start just after until_ms.
    prev: datetime = _cron(s, until_ms + 1).get_prev(datetime)  # type: ignore[attr-defined]
    t = round(prev.timestamp() * 1000)
    return t if t > after_ms else None


def ticks(s: Schedule, after_ms: int, until_ms: int) -> Iterator[int]:
    """Every tick in ``(after_ms, until_ms]``, in order."""
    t = next_tick(s, after_ms)
    while t <= until_ms:
        yield t
        t = next_tick(s, t)


def check(function: str, s: Schedule) -> None:
    """Raise ValueError naming what is wrong with ``function``'s schedule (at deploy)."""
    if bool(s.cron) == bool(s.period):
        raise ValueError(f"function {function!r}: a schedule has either a cron expression "
                         "or a period")
    if not s.cron:
        if not 1.0 <= s.period <= 366 * 86400.0:
            raise ValueError(f"function {function!r}: schedule period {s.period:g} s is "
                             "outside 1 s .. 366 days")
        return
    try:
        _zone(s.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"function {function!r}: unknown timezone {s.timezone!r}: use an "
                         "IANA name such as 'Europe/Berlin' or 'UTC'") from None
    from croniter import croniter

    if len(s.cron.split()) != 5:
        raise ValueError(f"function {function!r}: cron expression {s.cron!r} needs five "
                         "fields (minute hour day-of-month month day-of-week)")
    try:
        croniter(s.cron)
    except (ValueError, KeyError) as e:
        raise ValueError(f"function {function!r}: cron expression {s.cron!r} is not "
                         f"valid: {e}") from None


def describe(s: Schedule) -> str:
    if s.cron:
        return f"cron '{s.cron}' ({s.timezone})"
    return f"every {s.period:g}s"
