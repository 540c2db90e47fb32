"""A transient call's id says it is one (its tail starts with ``e5e5``), and no other id
does: every reader and writer picks the stream and bucket from the id alone."""

from __future__ import annotations

import time
from typing import Any

from burst_core import calls, names
from burst_core.calls import CallBuckets, build, new_call_id, submission_call
from burst_core.calls.caller import valid_call_id


def test_a_transient_id_has_the_mark_and_no_other_id_has_it() -> None:
    now = time.time()
    marked = "e5e5" + "0" * 16
    transient = new_call_id(now, transient=True)
    assert transient[15:19] == "e5e5" and names.is_transient_call(transient)
    assert valid_call_id(transient)
    # A tail that happens to start with the mark is changed for a call that is not one.
    plain = new_call_id(now, tail=marked)
    assert valid_call_id(plain) and not names.is_transient_call(plain)
    assert names.is_transient_call(new_call_id(now, tail=marked, transient=True))
    for _ in range(2000):
        assert not names.is_transient_call(new_call_id(now))
        assert names.is_transient_call(new_call_id(now, transient=True))


def test_deterministic_ids_stay_deterministic_and_unmarked() -> None:
    # A scheduled tick's id (a hash of its identity) never reads as transient.
    keys = [f"tick-{i}" for i in range(3000)]
    ids = [new_call_id(1.0e9, key=k) for k in keys]
    assert ids == [new_call_id(1.0e9, key=k) for k in keys]
    assert not any(names.is_transient_call(i) for i in ids)
    # A submission names the same call through any gateway, marked as asked.
    sid = f"{int(time.time() * 1000):012x}" + "ab" * 10
    plain, token = submission_call("ws", sid)
    marked, token2 = submission_call("ws", sid, transient=True)
    assert token == token2 and plain[:15] == marked[:15] and plain[19:] == marked[19:]
    assert not names.is_transient_call(plain) and names.is_transient_call(marked)
    assert submission_call("ws", sid, transient=True) == (marked, token)


def test_build_marks_a_transient_call_and_its_input() -> None:
    rec, inp = build("ws", "app", "f", "dep", b"x", "pickle", time.time(), transient=True)
    assert names.is_transient_call(rec.call_id) and inp.call_id == rec.call_id
    assert inp.input_id == "in-" + rec.call_id[3:]
    rec2, _ = build("ws", "app", "f", "dep", b"x", "pickle", time.time())
    assert not names.is_transient_call(rec2.call_id)


def test_stream_subject_and_bucket_follow_the_id() -> None:
    t = new_call_id(time.time(), transient=True)
    f = new_call_id(time.time())
    assert names.output_subject(t, 2) == f"burst.toutputs.{t}.2"
    assert names.output_subject(f, 2) == f"burst.outputs.{f}.2"
    assert names.outputs_stream(t) == names.STREAM_TRANSIENT_OUTPUTS
    assert names.outputs_stream(f) == names.STREAM_OUTPUTS
    assert names.outputs_filter(t) == f"burst.toutputs.{t}.*"
    assert names.calls_bucket(t) == names.KV_CALLS_TRANSIENT
    assert names.calls_bucket(f) == names.KV_CALLS
    # A key that is not a call id (a parent's list of children) is in the full bucket.
    assert names.calls_bucket(f"{t}.{f}") == names.KV_CALLS
    # The subjects each stream takes never overlap.
    assert names.output_subject(t, 1).startswith(names.SUBJECTS_TRANSIENT_OUTPUTS[:-1])
    assert not names.output_subject(t, 1).startswith(names.SUBJECTS_OUTPUTS[:-1])
    buckets = CallBuckets(full="full", transient="transient")  # type: ignore[arg-type]
    got: Any = (buckets.of(t), buckets.of(f))
    assert got == ("transient", "full")
    assert calls.CallBuckets is CallBuckets
