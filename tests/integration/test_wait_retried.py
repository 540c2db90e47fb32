"""A map's wait (``POST /v1/calls/wait``) names each call's attempt token as it was
submitted; a call that a retry moved on before the wait began is answered by its
current attempt's output as soon as it is stored, not when the wait runs out (a map of
failing inputs ended 30 s late, at every retried call)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from burst.wire import (
    MSGPACK,
    CallBatchRequest,
    CallBatchResponse,
    CallRef,
    CallWaitRequest,
    CallWaitResponse,
)
from burst_core import bus, names
from burst_core.schemas import CallRecordDecoder, Output, encode
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

TOKEN = "bst_wait-retried-test-token"
SDK = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MSGPACK, "Accept": MSGPACK}


@pytest.fixture
async def client(nats_url: str, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = inproc.settings(nats_url, redis_url, str(tmp_path), TOKEN)
    async with inproc.gateway(config, "retried", timeout=60) as (c, gw):
        yield c, gw


async def _retry(gw: Any, call_id: str, attempt: int, stale: bool = False) -> Output:
    """Move the call on to ``attempt`` as the agent does on a failure with retries left
    (a new token in its record; ``stale``: another attempt's token, not recorded)."""
    token = uuid.uuid4().hex
    if not stale:
        def bump(raw: bytes | None) -> bytes | None:
            assert raw is not None
            rec = CallRecordDecoder.decode(raw)
            return encode(msgspec.structs.replace(rec, attempt=attempt, attempt_token=token))

        await bus.kv_cas(gw.caller.calls_kv, call_id, bump)
    return Output(call_id=call_id, input_id=f"in-{call_id}", attempt=attempt,
                  attempt_token=token, status="failure", error_type="ExecutionError",
                  error_message=f"attempt {attempt} failed", workspace="default")


async def test_a_wait_gets_the_output_of_a_call_retried_before_it_began(
        client: tuple[httpx.AsyncClient, Any]) -> None:
    c, gw = client
    made = await c.post("/v1/apps/retried/functions/f/calls/batch", headers=SDK,
                        content=msgspec.msgpack.encode(CallBatchRequest(payloads=[b"a", b"b"])))
    assert made.status_code == 202, made.text
    refs = msgspec.msgpack.decode(made.content, type=CallBatchResponse).calls
    retried, staled = refs
    current = await _retry(gw, retried.call_id, 3)
    stale = await _retry(gw, staled.call_id, 2, stale=True)

    async def store_later() -> None:
        await asyncio.sleep(0.5)  # once the wait is under way
        for out in (stale, current):
            await bus.publish(gw.js, names.output_subject(out.call_id, out.attempt),
                              encode(out), msg_id=f"{out.input_id}:{out.attempt}")

    task = asyncio.create_task(store_later())
    t0 = time.monotonic()
    waited = await c.post("/v1/calls/wait", headers=SDK, content=msgspec.msgpack.encode(
        CallWaitRequest(calls=[CallRef(call_id=r.call_id, attempt_token=r.attempt_token)
                               for r in refs], wait=20)))
    took = time.monotonic() - t0
    await task
    assert waited.status_code == 200, waited.text
    results = msgspec.msgpack.decode(waited.content, type=CallWaitResponse).results
    # The retried call's current attempt answers at once; the stale output is refused.
    assert [(r.call_id, r.status) for r in results] == [(retried.call_id, "failure")]
    assert "attempt 3 failed" in (results[0].error_message or "")
    assert took < 5, took  # not the wait's 20 s
