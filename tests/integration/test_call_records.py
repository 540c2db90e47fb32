"""A call's record is stored just after its input; whoever needs it first writes it.

The gateway publishes a call's input before its record (the input is what a warm call
waits on). An agent that must decide a retry before the record lands writes the same
record from the input, and the gateway's own create then finds it as its own. Each test
runs for both kinds of call: a transient call's record is in its own bucket.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import nats.js.errors
import pytest

from burst.wire import RetryPolicy
from burst_agent.attempts import Attempts
from burst_core import bus, calls, names
from burst_core.schemas import CallRecordDecoder, encode

pytestmark = pytest.mark.integration

FN = "ws.app.f"


@pytest.fixture(params=[False, True], ids=["full", "transient"])
def transient(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def _record(js, call_id: str):  # type: ignore[no-untyped-def]
    raw, _ = await bus.kv_get(await js.key_value(names.calls_bucket(call_id)), call_id)
    return CallRecordDecoder.decode(raw) if raw is not None else None


async def _other_record(js, call_id: str) -> bytes | None:  # type: ignore[no-untyped-def]
    """The call's entry in the bucket its id does not name (there must be none)."""
    other = names.KV_CALLS if names.is_transient_call(call_id) else names.KV_CALLS_TRANSIENT
    raw, _ = await bus.kv_get(await js.key_value(other), call_id)
    return raw


async def test_inputs_are_published_before_their_records(js, transient: bool) -> None:  # type: ignore[no-untyped-def]
    kv = await calls.CallBuckets.open(js)
    built = [calls.build("ws", "app", "f", "d1", b"p%d" % i, "pickle", time.time(),
                         transient=transient) for i in range(3)]
    bucket = names.KV_CALLS_TRANSIENT if transient else names.KV_CALLS
    order: list[str] = []

    async def seen(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.subject == names.input_subject(FN):
            order.append("input")
        elif msg.subject.startswith(f"$KV.{bucket}."):
            order.append("record")

    sub = await bus.client_of(js).subscribe(">", cb=seen)
    await calls.create_many(js, bus.client_of(js), kv, FN, built, signals=None)
    await bus.client_of(js).flush()
    await sub.unsubscribe()
    assert order == ["input"] * 3 + ["record"] * 3
    for rec, inp in built:
        assert names.is_transient_call(rec.call_id) == transient
        assert await _record(js, rec.call_id) == rec
        assert await _other_record(js, rec.call_id) is None
        assert calls.first_record(inp) == rec


async def test_a_failure_before_the_record_lands_still_gets_its_retry(js, transient: bool) -> None:  # type: ignore[no-untyped-def]
    rec, inp = calls.build("ws", "app", "f", "d1", b"p", "pickle", time.time(),
                           transient=transient)
    attempts = Attempts(SimpleNamespace(js=js, nc=bus.client_of(js)))  # type: ignore[arg-type]
    delay = await attempts.schedule_retry(inp, RetryPolicy(max_retries=2, initial_delay=0.5))
    assert delay == 0.5
    now = await _record(js, rec.call_id)
    assert now is not None
    assert (now.attempt, now.user_failures, now.retry_pending) == (2, 1, True)
    assert now.attempt_token != rec.attempt_token
    assert (now.input_id, now.created_at, now.workspace) == (rec.input_id, rec.created_at, "ws")
    # The gateway's create, late, takes the record as the call's own: no error.
    await calls.create_record(await js.key_value(names.calls_bucket(rec.call_id)), rec)
    assert (await _record(js, rec.call_id)) == now
    assert await _other_record(js, rec.call_id) is None


async def test_a_redelivery_without_a_record_is_an_internal_retry(js, transient: bool) -> None:  # type: ignore[no-untyped-def]
    rec, inp = calls.build("ws", "app", "f", "d1", b"p", "pickle", time.time(),
                           transient=transient)
    attempts = Attempts(SimpleNamespace(js=js, nc=bus.client_of(js)))  # type: ignore[arg-type]
    resumed = await attempts.resume(inp)
    assert resumed is not None
    assert resumed.attempt == 2
    now = await _record(js, rec.call_id)
    assert now is not None and (now.attempt, now.internal_retries) == (2, 1)
    assert resumed.attempt_token == now.attempt_token
    assert await _other_record(js, rec.call_id) is None


async def test_a_lost_record_ack_is_not_an_error_but_another_call_is(js) -> None:  # type: ignore[no-untyped-def]
    kv = await js.key_value(names.KV_CALLS)
    rec, _ = calls.build("ws", "app", "f", "d1", b"p", "pickle", time.time())
    await kv.create(rec.call_id, encode(rec))  # stored; say its ack never came back
    await calls.create_record(kv, rec)  # the retry finds it as its own
    # The same call id made by another request (a racing idempotent resubmission): it
    # was accepted at another time, so this request did not make the call.
    other, _ = calls.build("ws", "app", "f", "d1", b"p", "pickle", rec.created_at + 0.001,
                           call_id=rec.call_id)
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await calls.create_record(kv, other)
