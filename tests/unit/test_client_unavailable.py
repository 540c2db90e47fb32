"""The SDK's retry window for a 503 Unavailable (BURST_UNAVAILABLE_RETRY) counts from the
first 503, not from the request's start: a long-polling read answered 503 at its end (NATS
elected a new leader meanwhile) is sent again."""

from __future__ import annotations

import json

import pytest

from burst.client import Client
from burst.exception import UnavailableError

UNAVAILABLE = json.dumps({"error": {"type": "Unavailable", "message": "NATS electing"}}).encode()


class _SlowConn:
    """Each request takes a minute of (fake) time; answers are scripted."""

    def __init__(self, clock: dict[str, float], answers: list[tuple[int, bytes]]) -> None:
        self.clock, self.answers = clock, answers

    def request(self, *_: object) -> tuple[int, bytes]:
        self.clock["now"] += 60.0
        return self.answers.pop(0)

    def close(self) -> None:
        pass


def _client(monkeypatch: pytest.MonkeyPatch, answers: list[tuple[int, bytes]]) -> Client:
    clock = {"now": 1000.0}
    client = Client("http://127.0.0.1:1", "bst_x", timeout=5, unavailable_retry=5)
    conn = _SlowConn(clock, answers)
    monkeypatch.setattr(client, "_conn", lambda: conn)
    monkeypatch.setattr("burst.client.time.monotonic", lambda: clock["now"])
    monkeypatch.setattr("burst.client.time.sleep", lambda _s: None)
    return client


def test_a_long_wait_answered_503_at_its_end_is_sent_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(503, UNAVAILABLE), (200, b'{"ok": true}')]
    client = _client(monkeypatch, answers)
    assert client.get_json("/v1/calls/fc-1", params={"wait": 60}) == {"ok": True}
    assert answers == []


def test_503s_past_the_window_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(503, UNAVAILABLE), (503, UNAVAILABLE), (200, b'{"ok": true}')]
    client = _client(monkeypatch, answers)
    with pytest.raises(UnavailableError, match="NATS electing"):
        client.get_json("/v1/calls/fc-1", params={"wait": 60})
    assert answers == [(200, b'{"ok": true}')]  # the second 503 came 60 s into a 5 s window
