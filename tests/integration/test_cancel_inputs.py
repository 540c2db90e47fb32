"""``apps.cancel_inputs`` (an ephemeral app stopped, a spent hard budget) against a real
nats-server: a function's queued calls and its ``burst shell`` sessions are answered and
their inputs purged; another function's are left alone."""

from __future__ import annotations

import time
from typing import Any

import nats.js.errors
import pytest

from burst_core import apps, bus, names
from burst_core import calls as call_store
from burst_core.schemas import CallCancelledDecoder, OutputDecoder, encode
from tests.waiting import eventually_async as eventually

pytestmark = pytest.mark.integration

WS, APP = "ws", "app"


async def _shell(js: Any, function: str) -> str:
    calls_kv = await js.key_value(names.KV_CALLS)
    rec, inp = call_store.build(WS, APP, function, "dep-1", b"", names.SHELL_FORMAT,
                                time.time())
    await call_store.create_shell(js, calls_kv, rec, inp)
    return rec.call_id


async def _queued(js: Any, function: str) -> str:
    calls_kv = await js.key_value(names.KV_CALLS)
    rec, inp = call_store.build(WS, APP, function, "dep-1", b"x", "pickle", time.time())
    await call_store.create_record(calls_kv, rec)
    await bus.publish(js, names.input_subject(names.function_key(WS, APP, function)),
                      encode(inp), msg_id=inp.input_id)
    return rec.call_id


async def _input_of(js: Any, subject: str) -> bool:
    try:
        await js.get_msg(names.STREAM_INPUTS, subject=subject, seq=1, next=True)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_a_functions_shell_sessions_are_cancelled_with_its_calls(js: Any) -> None:
    fn_key = names.function_key(WS, APP, "f")
    cancelled: list[str] = []

    async def on_cancel(msg: Any) -> None:
        cancelled.append(CallCancelledDecoder.decode(msg.data).call_id)

    sub = await bus.client_of(js).subscribe(names.call_cancelled_subject(fn_key),
                                            cb=on_cancel)
    shell = await _shell(js, "f")
    other_shell = await _shell(js, "g")  # another function's session: kept
    queued = await _queued(js, "f")
    assert await _input_of(js, names.shell_input_subject(shell))

    n = await apps.cancel_inputs(js, fn_key, "its hard budget is spent", status="failure",
                                 error_type="burst.exception.BudgetExceededError")

    assert n == 2
    for call_id in (shell, queued):
        raw = await js.get_msg(names.STREAM_OUTPUTS, subject=names.output_subject(call_id, 1),
                               seq=1, next=True)
        out = OutputDecoder.decode(raw.data)
        assert (out.status, out.error_type) == ("failure",
                                                "burst.exception.BudgetExceededError")
        assert "its hard budget is spent" in out.error_message
    assert not await _input_of(js, names.shell_input_subject(shell))
    assert not await _input_of(js, names.input_subject(fn_key))
    assert await _input_of(js, names.shell_input_subject(other_shell))
    # Told to the agents: a container holding the session stops.
    await eventually(lambda: sorted(cancelled) == sorted([shell, queued]))
    # Once answered, a second pass finds nothing to cancel.
    assert await apps.cancel_inputs(js, fn_key, "again") == 0
    await sub.unsubscribe()
