"""Submission ids: what the gateway derives from them, and the bad ones it refuses."""

from __future__ import annotations

import time

import pytest

from burst import wire
from burst.client import Client
from burst.exception import InvalidError
from burst_core import calls


def test_a_submission_makes_the_same_call_on_every_gateway_and_per_workspace() -> None:
    sid = wire.new_submission_id()
    now = time.time()
    rec_a, inp_a = calls.build("ws", "app", "f", "d1", b"p", "pickle", now, submission=sid)
    rec_b, inp_b = calls.build("ws", "app", "f", "d1", b"p", "pickle", now + 3, submission=sid)
    assert (rec_a.call_id, inp_a.input_id, inp_a.attempt_token) == \
        (rec_b.call_id, inp_b.input_id, inp_b.attempt_token)
    assert calls.call_created_at(rec_a.call_id) == pytest.approx(now, abs=5)
    other, _ = calls.build("ws2", "app", "f", "d1", b"p", "pickle", now, submission=sid)
    assert other.call_id != rec_a.call_id
    fresh, _ = calls.build("ws", "app", "f", "d1", b"p", "pickle", now)
    again, _ = calls.build("ws", "app", "f", "d1", b"p", "pickle", now)
    assert fresh.call_id != again.call_id


def test_bad_submission_ids_are_refused_naming_them() -> None:
    now = time.time()
    with pytest.raises(InvalidError, match="invalid submission_id 'nothex'"):
        calls.check_submission_id("nothex", now)
    old = f"{int((now - 3 * 86400) * 1000):012x}" + "0" * 20
    with pytest.raises(InvalidError, match="from the gateway's clock"):
        calls.check_submission_id(old, now)
    ok = wire.new_submission_id()
    assert calls.check_submission_id(ok, now) == ok


def test_several_gateway_urls() -> None:
    c = Client("http://a:1, http://b:2/", "t")
    assert c.url == "http://a:1"
    with pytest.raises(ValueError, match="invalid cluster URL 'ftp://b' in"):
        Client("http://a:1,ftp://b", "t")
