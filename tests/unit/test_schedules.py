from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

import burst
from burst.exception import InvalidError
from burst.wire import Schedule
from burst_core import schedules as ticks

BERLIN = ZoneInfo("Europe/Berlin")


def ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


sched_app = burst.App("sched")


@sched_app.function(schedule=burst.Cron("0  8 * * 1", timezone="Europe/Berlin"))
def weekly() -> None: ...


@sched_app.function(schedule=burst.Period(minutes=1, seconds=30))
def often() -> None: ...


def test_schedule_options_become_the_function_spec() -> None:
    assert weekly.spec.schedule == Schedule(cron="0 8 * * 1", timezone="Europe/Berlin")
    assert often.spec.schedule == Schedule(period=90.0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: burst.Cron("0 8 * *"), "five fields"),
    (lambda: burst.Cron("61 8 * * 1"), "not valid"),
    (lambda: burst.Cron("0 8 * * 1", timezone="Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
    (lambda: burst.Period(seconds=0.5), "out of range"),
    (lambda: burst.Period(days=400), "out of range"),
    (lambda: burst.Period(seconds=-1), "seconds=-1"),
    (lambda: burst.Period(minutes="5"), "minutes='5'"),
])
def test_bad_schedules_are_refused_at_definition(make: object, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        make()  # type: ignore[operator]


def test_schedule_must_be_a_schedule_and_not_on_a_class() -> None:
    app = burst.App("sched")
    with pytest.raises(InvalidError, match="burst.Cron"):
        app.function(schedule="0 8 * * 1")  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="class"):
        app.cls(schedule=burst.Period(seconds=5))


def test_period_ticks_are_anchored_and_exact() -> None:
    s = Schedule(period=1.5)
    assert ticks.next_tick(s, 1000) == 2500
    assert list(ticks.ticks(s, 1000, 5500)) == [2500, 4000, 5500]
    assert ticks.latest_tick(s, 1000, 5499) == 4000
    assert ticks.latest_tick(s, 1000, 2499) is None


def test_cron_ticks_follow_the_timezone_across_daylight_saving() -> None:
    s = Schedule(cron="0 8 * * 1", timezone="Europe/Berlin")
    # Mondays at 08:00 Berlin time: UTC+1 in March before the change, UTC+2 after.
    start = ms(datetime(2025, 3, 20, tzinfo=BERLIN))
    got = list(ticks.ticks(s, start, ms(datetime(2025, 4, 1, tzinfo=BERLIN))))
    assert got == [ms(datetime(2025, 3, 24, 8, tzinfo=BERLIN)),
                   ms(datetime(2025, 3, 31, 8, tzinfo=BERLIN))]
    assert got[1] - got[0] == (7 * 24 - 1) * 3600 * 1000
    assert ticks.latest_tick(s, start, got[1]) == got[1]
    assert ticks.latest_tick(s, start, got[1] - 1) == got[0]


def test_deploy_time_check_names_the_function() -> None:
    with pytest.raises(ValueError, match="function 'f': cron expression '0 8 \\* \\*'"):
        ticks.check("f", Schedule(cron="0 8 * *"))
    with pytest.raises(ValueError, match="unknown timezone"):
        ticks.check("f", Schedule(cron="0 8 * * 1", timezone="Nowhere/City"))
    with pytest.raises(ValueError, match="either a cron expression or a period"):
        ticks.check("f", Schedule())
    ticks.check("f", Schedule(period=60))
