"""Schedules: run a deployed function by itself, on a cron expression or every period.

Example::

    import burst

    app = burst.App("reports")

    @app.function(schedule=burst.Cron("0 8 * * 1", timezone="Europe/Berlin"))
    def weekly() -> None:
        ...

    @app.function(schedule=burst.Period(minutes=5))
    def poll() -> None:
        ...

Schedules fire on apps deployed with ``burst deploy`` only (not on the ephemeral copy
``burst run`` makes). Each tick is one call with no arguments, fired exactly once, also
across a scheduler failover. ``burst schedule list/pause/resume`` manage them; ``resume
--backfill`` fires the ticks missed while paused or while the cluster was down.
"""

from __future__ import annotations

from typing import Any

from burst import _context
from burst.exception import InvalidError
from burst.wire import Schedule

#: Shortest and longest period between ticks.
MIN_PERIOD = 1.0
MAX_PERIOD = 366 * 86400.0


class Cron:
    """A cron schedule: five fields (minute hour day-of-month month day-of-week), evaluated
    in ``timezone`` (an IANA name, default UTC; daylight saving time is followed)."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        if not isinstance(cron_string, str) or len(cron_string.split()) != 5:
            raise InvalidError(
                f"Cron({cron_string!r}) needs five fields: minute hour day-of-month month "
                "day-of-week, for example '0 8 * * 1' (Mondays at 08:00)")
        if not isinstance(timezone, str) or not timezone:
            raise InvalidError(f"Cron timezone={timezone!r} is not a timezone name: use an "
                               "IANA name such as 'Europe/Berlin' or 'UTC'")
        self.cron_string = " ".join(cron_string.split())
        self.timezone = timezone
        # Inside a container the app was validated when it was deployed: stay light.
        if _context.platform is None:
            check_cron(self.cron_string, timezone)

    def _spec(self) -> Schedule:
        return Schedule(cron=self.cron_string, timezone=self.timezone)

    def __repr__(self) -> str:
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"


class Period:
    """A tick every ``days + hours + minutes + seconds`` (at least 1 s), counted from when
    the function was first deployed."""

    def __init__(self, *, days: float = 0, hours: float = 0, minutes: float = 0,
                 seconds: float = 0) -> None:
        total = 0.0
        for name, value, unit in (("days", days, 86400), ("hours", hours, 3600),
                                  ("minutes", minutes, 60), ("seconds", seconds, 1)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidError(f"Period {name}={value!r} is not a number >= 0")
            total += value * unit
        if not MIN_PERIOD <= total <= MAX_PERIOD:
            raise InvalidError(f"Period of {total:g} s is out of range: allowed "
                               f"{MIN_PERIOD:g} s to {MAX_PERIOD / 86400:g} days")
        self.seconds = total

    def _spec(self) -> Schedule:
        return Schedule(period=self.seconds)

    def __repr__(self) -> str:
        return f"Period(seconds={self.seconds:g})"


def spec_of(schedule: Any) -> Schedule | None:
    """The wire form of a ``schedule=`` option (None: no schedule)."""
    if schedule is None:
        return None
    if isinstance(schedule, Cron | Period):
        return schedule._spec()
    raise InvalidError(f"schedule={schedule!r} is not a schedule: use burst.Cron('0 8 * * 1') "
                       "or burst.Period(minutes=5)")


def check_cron(cron_string: str, timezone: str) -> None:
    """Raise :class:`InvalidError` naming what is wrong with a cron schedule.

    The fields are checked with ``croniter`` where it is installed (always on the servers,
    which check again at deploy time); the timezone with the standard library.
    """
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidError(f"unknown timezone {timezone!r}: use an IANA name such as "
                           "'Europe/Berlin' or 'UTC'") from None
    try:
        from croniter import croniter
    except ImportError:
        return
    if len(cron_string.split()) != 5:
        raise InvalidError(f"cron expression {cron_string!r} needs five fields")
    try:
        croniter(cron_string)
    except (ValueError, KeyError) as e:
        raise InvalidError(f"cron expression {cron_string!r} is not valid: {e}") from None
