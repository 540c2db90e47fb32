"""The SDK sends a read again while the gateway answers 503 Unavailable (as it does while
NATS elects a leader), within BURST_UNAVAILABLE_RETRY; a write is never sent twice."""

from __future__ import annotations

import json

import pytest

from burst.client import Client, unavailable_retry
from burst.exception import InvalidError, UnavailableError
from tests.unit.test_http_transport import Server


def _reply(status: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


UNAVAILABLE = _reply(503, {"error": {"type": "Unavailable", "message": "NATS electing"}})


def test_a_read_answered_503_is_sent_again_until_it_succeeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "20")
    server = Server([UNAVAILABLE, UNAVAILABLE, _reply(200, {"ok": True})])
    client = Client(f"http://127.0.0.1:{server.port}", "bst_x", timeout=5)
    assert client.get_json("/v1/calls/fc-1") == {"ok": True}
    assert len(server.requests) == 3


def test_a_wait_on_calls_is_a_read_and_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "20")
    server = Server([UNAVAILABLE, _reply(200, {"ok": True})])
    client = Client(f"http://127.0.0.1:{server.port}", "bst_x", timeout=5)
    client.request("POST", "/v1/calls/wait", b"{}", "application/json")
    assert len(server.requests) == 2


def test_a_write_answered_503_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "20")
    server = Server([UNAVAILABLE, _reply(200, {"ok": True})])
    client = Client(f"http://127.0.0.1:{server.port}", "bst_x", timeout=5)
    with pytest.raises(UnavailableError, match="NATS electing"):
        client.post_json("/v1/apps/a/functions/f/calls", {"args": []})
    assert len(server.requests) == 1


def test_reads_give_up_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "0")
    server = Server([UNAVAILABLE, _reply(200, {"ok": True})])
    client = Client(f"http://127.0.0.1:{server.port}", "bst_x", timeout=5)
    with pytest.raises(UnavailableError):
        client.get_json("/v1/calls/fc-1")
    assert len(server.requests) == 1


@pytest.mark.parametrize("bad", ["soon", "-1", "inf"])
def test_a_bad_window_is_named(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", bad)
    with pytest.raises(InvalidError, match=f"BURST_UNAVAILABLE_RETRY={bad!r}"):
        unavailable_retry()


def test_the_window_starts_at_the_first_503_not_at_a_long_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-polling read (a call's result, waited on for up to a minute) answered 503 at
    its end is still sent again: the window counts from the 503."""
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "5")
    clock = {"now": 1000.0}
    answers = [UnavailableError("NATS electing"), (200, b'{"ok": true}')]
    first = answers[0]
    assert isinstance(first, UnavailableError)
    first.status = 503

    def once(*_: object) -> tuple[int, bytes]:
        clock["now"] += 60.0  # the wait ran a minute before its answer
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client("http://127.0.0.1:1", "bst_x", timeout=5)
    monkeypatch.setattr(client, "_request_once", once)
    monkeypatch.setattr("burst.client.time.monotonic", lambda: clock["now"])
    monkeypatch.setattr("burst.client.time.sleep", lambda s: None)
    assert client.get_json("/v1/calls/fc-1?wait=60") == {"ok": True}
    assert answers == []
