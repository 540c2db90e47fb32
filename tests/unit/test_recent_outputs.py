"""The output router's memory of recent outputs follows the call rate: bounded by count
and by age, so a long run at a steady rate reaches a plateau (bench/soak.py)."""

from __future__ import annotations

import pytest

from burst_core.calls.outputs import OutputRouter, Recent
from burst_core.schemas import Output


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_older_than_the_age_are_forgotten_so_size_follows_the_rate() -> None:
    clock = Clock()
    recent: Recent[int] = Recent(max_items=1_000_000, max_age=60.0, clock=clock)
    # 10 minutes at 40 outputs a second: only the last minute's stay.
    for n in range(10 * 60 * 40):
        clock.now += 1 / 40
        recent.put(f"fc-{n}", n)
    assert 2390 <= len(recent) <= 2401
    assert recent.get("fc-0") is None
    last = 10 * 60 * 40 - 1
    assert recent.get(f"fc-{last}") == last


def test_count_bound_forgets_the_oldest_first() -> None:
    recent: Recent[int] = Recent(max_items=3, max_age=3600.0, clock=Clock())
    for n in range(5):
        recent.put(f"fc-{n}", n)
    assert len(recent) == 3
    assert [recent.get(f"fc-{n}") for n in range(5)] == [None, None, 2, 3, 4]


def test_an_expired_entry_is_not_answered_even_before_the_next_put() -> None:
    clock = Clock()
    recent: Recent[str] = Recent(max_items=10, max_age=5.0, clock=clock)
    recent.put("fc-a", "a")
    assert recent.get("fc-a") == "a" and "fc-a" in recent
    clock.now += 5.0
    assert recent.get("fc-a") is None and "fc-a" not in recent


def test_a_second_output_of_a_call_replaces_the_first_and_is_newest() -> None:
    clock = Clock()
    recent: Recent[str] = Recent(max_items=2, max_age=60.0, clock=clock)
    recent.put("fc-a", "attempt 1")
    recent.put("fc-b", "b")
    recent.put("fc-a", "attempt 2")
    recent.put("fc-c", "c")  # past the bound: b (the oldest) goes, not a
    assert recent.get("fc-a") == "attempt 2" and recent.get("fc-b") is None


@pytest.mark.parametrize("kwargs, named", [
    ({"max_items": 0}, "BURST_RECENT_OUTPUTS"),
    ({"max_items": 2.5}, "BURST_RECENT_OUTPUTS"),
    ({"max_age": 0.0}, "BURST_RECENT_OUTPUTS_AGE"),
    ({"max_age": -1.0}, "BURST_RECENT_OUTPUTS_AGE"),
])
def test_bad_bounds_are_refused_naming_the_setting(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Recent(**kwargs)  # type: ignore[arg-type]


def test_the_router_stays_bounded_after_many_outputs() -> None:
    router = OutputRouter(None, recent_max=100, recent_age=3600.0)  # type: ignore[arg-type]

    class Msg:
        subject = "x"

        def __init__(self, data: bytes) -> None:
            self.data = data

    from burst_core.schemas import encode
    for n in range(1000):
        out = Output(call_id=f"fc-{n}", input_id=f"in-{n}", attempt=1, attempt_token="t",
                     status="success", payload=b"x")
        router._on_msg(Msg(encode(out)))  # type: ignore[arg-type]
    assert len(router._recent) == 100
    assert router.recent("fc-999") is not None and router.recent("fc-0") is None
