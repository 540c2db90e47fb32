"""The gateway's output router on a real nats-server: group waits (a map's outstanding
calls) get the current attempt's outputs only, follow attempt changes, and leave nothing
registered behind."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from burst_core import bus, names
from burst_core.calls.outputs import OutputRouter
from burst_core.schemas import AttemptChanged, Output, encode

pytestmark = pytest.mark.integration


def _out(call_id: str, token: str, attempt: int = 1) -> Output:
    return Output(call_id=call_id, input_id="in-" + call_id[3:], attempt=attempt,
                  attempt_token=token, status="success", payload=b"x")


async def _store(js, out: Output) -> None:  # type: ignore[no-untyped-def]
    await bus.publish(js, names.output_subject(out.call_id, out.attempt), encode(out),
                      msg_id=f"{out.input_id}:{out.attempt}")


async def test_group_wait_takes_current_attempts_only_and_cleans_up(js) -> None:  # type: ignore[no-untyped-def]
    router = OutputRouter(js)
    await router.start()
    await router.follow_attempts(bus.client_of(js))
    try:
        a, b, c = (f"fc-{uuid.uuid4().hex}" for _ in range(3))
        g = router.register_group({a: "ta", b: "tb", c: "tc"})
        await _store(js, _out(a, "stale"))  # another attempt's output: refused
        await _store(js, _out(b, "tb"))
        # The stale output may wake the group first (as "unsure": the waiter checks the
        # call's record), so wait until b's is in too.
        for _ in range(250):
            if b in g.outputs and a in g.unsure:
                break
            await asyncio.wait_for(g.event.wait(), 5)
            g.event.clear()
        assert list(g.outputs) == [b] and list(g.unsure) == [a]
        # c moves on to attempt 2: its first attempt's output no longer counts.
        await bus.client_of(js).publish(names.attempt_changed_subject(c), encode(
            AttemptChanged(call_id=c, attempt=2, attempt_token="tc2", reason="retry")))
        await bus.client_of(js).flush()
        for _ in range(50):
            if g.tokens[c] == "tc2":
                break
            await asyncio.sleep(0.02)
        await _store(js, _out(c, "tc"))
        await _store(js, _out(c, "tc2", attempt=2))
        await _store(js, _out(a, "ta", attempt=2))
        for _ in range(100):
            if len(g.outputs) == 3:
                break
            await asyncio.sleep(0.02)
        assert {k: v.attempt_token for k, v in g.outputs.items()} == {
            a: "ta", b: "tb", c: "tc2"}
        other = router.register_group({a: "ta"})
        router.unregister_group(g)
        assert router._groups == {a: [other]}
        router.unregister_group(other)
        assert router._groups == {}
    finally:
        await router.stop()
