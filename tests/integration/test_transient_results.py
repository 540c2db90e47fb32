"""Transient calls, kept apart (issue 21's soak): a client's waited ``.remote()`` and the
SDK's map inputs have ids that say so, their outputs go to ``BURST_TRANSIENT_OUTPUTS`` and
their records to ``burst_calls_transient``, both kept ``BURST_TRANSIENT_RESULT_RETENTION``
seconds; every other call keeps the full retention. On a real nats-server, through the
gateway's routes."""

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
    CallRequest,
    CallResponse,
    new_submission_id,
)
from burst_core import bus, names
from burst_core.bus.topology import Topology
from burst_core.calls.outputs import OutputRouter
from burst_core.schemas import CallRecordDecoder, Output, encode
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

TOKEN = "bst_transient-results-test-token"
SDK = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MSGPACK, "Accept": MSGPACK}
JSON = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FN = "/v1/apps/tr/functions/f"


@pytest.fixture
async def client(nats_url: str, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = inproc.settings(nats_url, redis_url, str(tmp_path), TOKEN)
    async with inproc.gateway(config, "tr", timeout=60) as (c, gw):
        yield c, gw


async def _entry(js: Any, bucket: str, call_id: str) -> tuple[bytes | None, int]:
    return await bus.kv_get(await js.key_value(bucket), call_id)


async def _answer(js: Any, call_id: str, token: str, attempt: int = 1) -> None:
    out = Output(call_id=call_id, input_id="in-" + call_id[3:], attempt=attempt,
                 attempt_token=token, status="success", payload=b"ok", workspace="default")
    await bus.publish(js, names.output_subject(call_id, attempt), encode(out),
                      msg_id=f"{out.input_id}:{attempt}")


def _sdk_call(payload: bytes = b"x") -> bytes:
    return msgspec.msgpack.encode(CallRequest(payload=payload,
                                              submission_id=new_submission_id()))


async def test_each_kind_of_call_lands_where_its_id_says(
        client: tuple[httpx.AsyncClient, Any]) -> None:
    c, gw = client
    made: dict[str, tuple[str, bool]] = {}  # kind -> (call id, transient expected)

    # A client's .remote(): waited (no agent answers here: 202 after the wait).
    r = await c.post(f"{FN}/calls", params={"wait": 0.3}, headers=SDK, content=_sdk_call())
    assert r.status_code == 202, r.text
    made["remote"] = (msgspec.msgpack.decode(r.content, type=CallResponse).call_id, True)
    # .spawn(): not waited.
    r = await c.post(f"{FN}/calls", params={"wait": 0}, headers=SDK, content=_sdk_call())
    made["spawn"] = (msgspec.msgpack.decode(r.content, type=CallResponse).call_id, False)
    # A waited call with an idempotency key: it may be asked for again.
    r = await c.post(f"{FN}/calls", params={"wait": 0.3}, content=_sdk_call(),
                     headers={**SDK, "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    made["keyed"] = (msgspec.msgpack.decode(r.content, type=CallResponse).call_id, False)
    # The SDK's map (a batch marked transient) and an unmarked batch.
    for kind, transient in (("map", True), ("batch", False)):
        r = await c.post(f"{FN}/calls/batch", headers=SDK, content=msgspec.msgpack.encode(
            CallBatchRequest(payloads=[b"a", b"b"], transient=transient)))
        assert r.status_code == 202, r.text
        for i, ref in enumerate(msgspec.msgpack.decode(r.content,
                                                       type=CallBatchResponse).calls):
            made[f"{kind}{i}"] = (ref.call_id, transient)
    # A JSON map (paged later, at any time): full retention.
    r = await c.post(f"{FN}/maps", headers=JSON, json={"inputs": [{"args": [1]}]})
    assert r.status_code == 202, r.text
    results = await c.get(f"/v1/maps/{r.json()['map_id']}/results",
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert results.status_code == 200, results.text

    for kind, (call_id, transient) in made.items():
        assert names.is_transient_call(call_id) == transient, kind
        here, _ = await _entry(gw.js, names.calls_bucket(call_id), call_id)
        there, _ = await _entry(gw.js, names.KV_CALLS if transient else names.KV_CALLS_TRANSIENT,
                                call_id)
        assert here is not None and there is None, kind
        rec = CallRecordDecoder.decode(here)
        await _answer(gw.js, call_id, rec.attempt_token)
        stored = await gw.js.get_last_msg(names.outputs_stream(call_id),
                                          names.output_subject(call_id, 1))
        assert stored.subject.startswith("burst.toutputs." if transient else "burst.outputs.")
        got = await c.get(f"/v1/calls/{call_id}", headers={**SDK, "Accept": MSGPACK})
        assert got.status_code == 200, (kind, got.text)
        assert msgspec.msgpack.decode(got.content, type=CallResponse).status == "success"
    # No transient output in the full stream, nor the other way round.
    full = await gw.js.stream_info(names.STREAM_OUTPUTS)
    part = await gw.js.stream_info(names.STREAM_TRANSIENT_OUTPUTS)
    assert part.state.messages == sum(t for _, t in made.values())
    assert full.state.messages == sum(not t for _, t in made.values())


async def test_the_router_delivers_outputs_of_both_streams(js: Any) -> None:
    router = OutputRouter(js)
    await router.start()
    try:
        now = time.time()
        from burst_core.calls import new_call_id

        ids = [new_call_id(now, transient=True), new_call_id(now)]
        futs = [router.register(i, "t") for i in ids]
        group = router.register_group({i: "t" for i in ids})
        for i in ids:
            await _answer(js, i, "t")
        outs = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert [o.call_id for o in outs] == ids
        for _ in range(200):
            if len(group.outputs) == 2:
                break
            await asyncio.sleep(0.01)
        assert set(group.outputs) == set(ids)
        router.unregister_group(group)
        for i in ids:
            assert router.recent(i) is not None
            fetched = await router.fetch(i, 1)
            assert fetched is not None and fetched.call_id == i
            assert await router.fetch(i, 2) is None
    finally:
        await router.stop()


async def test_a_polled_remote_keeps_its_record(client: tuple[httpx.AsyncClient, Any]) -> None:
    c, gw = client
    r = await c.post(f"{FN}/calls", params={"wait": 0.2}, headers=SDK, content=_sdk_call())
    call_id = msgspec.msgpack.decode(r.content, type=CallResponse).call_id
    assert names.is_transient_call(call_id)
    raw, rev = await _entry(gw.js, names.KV_CALLS_TRANSIENT, call_id)
    assert raw is not None
    # Each poll of a call still running writes its record again: it outlives the
    # transient retention for as long as its caller polls.
    for _ in range(2):
        got = await c.get(f"/v1/calls/{call_id}", params={"wait": 0.2}, headers=SDK)
        assert got.status_code == 202, got.text
        again, rev2 = await _entry(gw.js, names.KV_CALLS_TRANSIENT, call_id)
        assert again == raw and rev2 > rev
        rev = rev2
    # A retry's write is never undone by it (compare-and-set).
    def bump(old: bytes | None) -> bytes | None:
        assert old is not None
        rec = CallRecordDecoder.decode(old)
        return encode(msgspec.structs.replace(rec, attempt=2, attempt_token=uuid.uuid4().hex))

    await bus.kv_cas(gw.caller.buckets.of(call_id), call_id, bump)
    got = await c.get(f"/v1/calls/{call_id}", params={"wait": 0.2}, headers=SDK)
    assert got.status_code == 202
    now, _ = await _entry(gw.js, names.KV_CALLS_TRANSIENT, call_id)
    assert now is not None and CallRecordDecoder.decode(now).attempt == 2
    # A spawned call's record is kept as long as results anyway: not written again.
    r = await c.post(f"{FN}/calls", params={"wait": 0}, headers=SDK, content=_sdk_call())
    spawned = msgspec.msgpack.decode(r.content, type=CallResponse).call_id
    _, rev = await _entry(gw.js, names.KV_CALLS, spawned)
    await c.get(f"/v1/calls/{spawned}", params={"wait": 0.2}, headers=SDK)
    assert (await _entry(gw.js, names.KV_CALLS, spawned))[1] == rev


async def test_the_stream_and_bucket_follow_the_setting(js: Any) -> None:
    async def ages() -> tuple[float, float, float, float]:
        got = []
        for stream in (names.STREAM_TRANSIENT_OUTPUTS, f"KV_{names.KV_CALLS_TRANSIENT}",
                       names.STREAM_OUTPUTS, f"KV_{names.KV_CALLS}"):
            got.append((await js.stream_info(stream)).config.max_age)
        return tuple(got)  # type: ignore[return-value]

    week = 7 * 86400.0
    assert await ages() == (600.0, 600.0, week, week)  # the defaults
    await bus.ensure_topology(js, Topology(transient_retention=300.0))
    assert await ages() == (300.0, 300.0, week, week)
    await bus.ensure_topology(js, Topology(transient_retention=900.0, result_retention=3600.0))
    assert await ages() == (900.0, 900.0, 3600.0, 3600.0)
    with pytest.raises(ValueError, match="BURST_TRANSIENT_RESULT_RETENTION=60"):
        await bus.ensure_topology(js, Topology(transient_retention=60.0))
    assert await ages() == (900.0, 900.0, 3600.0, 3600.0)


async def test_a_transient_call_asked_for_after_it_expired_names_both_retentions(
        client: tuple[httpx.AsyncClient, Any]) -> None:
    c, _ = client
    from burst_core.calls import new_call_id

    gone = new_call_id(time.time() - 3600, transient=True)
    r = await c.get(f"/v1/calls/{gone}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404, r.text
    message = r.json()["error"]["message"]
    assert "transient" in message and "600 s" in message and "7 days" in message
    assert "BURST_TRANSIENT_RESULT_RETENTION" in message and "BURST_RESULT_RETENTION" in message
    other = new_call_id(time.time() - 3600)
    r = await c.get(f"/v1/calls/{other}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404 and "transient" not in r.json()["error"]["message"]
