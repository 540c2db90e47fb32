"""How long `.remote()` waits for its call's printed lines: the BURST_LOG_WAIT setting."""

from __future__ import annotations

import threading
import time

import pytest

from burst._logs import LogFollower
from burst.config import seconds_setting
from burst.exception import InvalidError


class _Idle(LogFollower):
    """A follower whose stream never sends anything (alive until stopped)."""

    def run(self) -> None:
        self._stopping.wait()


@pytest.fixture
def follower() -> object:
    f = _Idle(client=None, app="a")  # type: ignore[arg-type]
    f.start()
    yield f
    f.stop()
    f.join(10)  # threading.Thread.join calls Thread._stop(): the follower must not hide it
    assert not f.is_alive()


def test_wait_for_lines_is_bounded_by_the_setting(follower: LogFollower,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_LOG_WAIT", "0.3")
    start = time.monotonic()
    follower.wait_for("fc-1", lines=2)
    # the old bound was a fixed 2 s
    assert 0.25 <= time.monotonic() - start < 1.9


def test_wait_for_returns_when_the_lines_came(follower: LogFollower,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_LOG_WAIT", "60")

    def lines() -> None:
        for i in range(2):
            follower._on_line({"type": "log", "line": f"l{i}", "call_id": "fc-2",
                               "attempt": 1, "function": "f"})

    threading.Timer(0.1, lines).start()
    start = time.monotonic()
    follower.wait_for("fc-2", lines=2)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("raw", ["soon", "-1", "inf", "nan"])
def test_bad_log_wait_is_named(raw: str) -> None:
    with pytest.raises(InvalidError, match=f"BURST_LOG_WAIT={raw!r}"):
        seconds_setting("BURST_LOG_WAIT", 2.0, {"BURST_LOG_WAIT": raw})
    assert seconds_setting("BURST_LOG_WAIT", 2.0, {}) == 2.0
