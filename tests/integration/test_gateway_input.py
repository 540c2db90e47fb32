"""Input that used to answer 500 (issue 12): non-finite results, deeply nested JSON, names
NATS cannot take, and an ``Idempotency-Key`` reused with another body. A gateway in this
process on a real NATS and Redis; a stand-in agent answers each input as the container
shim would (its own encoder, ``burst._shim.main.encode_result``)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from burst._shim.main import encode_result
from burst.wire import (
    MSGPACK,
    CallRef,
    CallRequest,
    CallResponse,
    CallWaitRequest,
)
from burst_core import bus, names
from burst_core.schemas import Input, Output, OutputItem, encode
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

TOKEN = "bst_gateway-input-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLS = "/v1/apps/inp/functions/f/calls"


def _no_constant(c: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {c} in an answer")


def strict_json(r: httpx.Response) -> Any:
    """The answer's body as standard JSON (which has no NaN or Infinity)."""
    return json.loads(r.content, parse_constant=_no_constant)


def _answer(inp: Input) -> tuple[list[bytes], bytes]:
    """The stand-in function's items and result, encoded as the shim encodes them: each
    argument as a float (so "nan" gives NaN); with the keyword ``text`` that text; with
    the keyword ``depth`` one item and a
    result nested that deep, written out directly (a container's stack is shallow, so its
    JSON writer goes deeper than the gateway's reader can follow)."""
    body = json.loads(inp.payload)
    if "depth" in body["kwargs"]:
        deep = _nested(body["kwargs"]["depth"])
        return [deep], deep
    if "text" in body["kwargs"]:  # the text back, as given
        result: list[Any] = [body["kwargs"]["text"]]
    else:
        result = [float(a) for a in body["args"]]
    return [encode_result(x, True) for x in result], encode_result(result, True)


@pytest.fixture
async def client(nats_url: str, redis_url: str, tmp_path) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    config = inproc.settings(nats_url, redis_url, str(tmp_path), TOKEN)
    async with inproc.gateway(config, "inp", headers=AUTH) as (c, _):
        nc = await bus.connect(nats_url, "stand-in-agent")
        js = nc.jetstream()

        async def run(msg: Any) -> None:
            inp = msgspec.msgpack.decode(msg.data, type=Input)
            items, result = _answer(inp)
            # A generator's items come first (the route lists them), then the output.
            for i, item in enumerate(items):
                await bus.publish(js, names.items_subject(inp.call_id, inp.attempt), encode(
                    OutputItem(call_id=inp.call_id, attempt=inp.attempt,
                               attempt_token=inp.attempt_token, index=i, payload=item,
                               payload_format="json")))
            out = Output(call_id=inp.call_id, input_id=inp.input_id, attempt=inp.attempt,
                         attempt_token=inp.attempt_token, status="success", payload=result,
                         payload_format="json", workspace=inp.workspace,
                         finished_at=time.time())
            await bus.publish(js, names.output_subject(inp.call_id, inp.attempt), encode(out),
                              msg_id=f"{inp.input_id}:{inp.attempt}")
            await msg.ack()

        # From the stream, as agents take inputs (a resubmitted input JetStream dropped as
        # a duplicate never arrives).
        await js.subscribe(names.input_subject("default.inp.f"), cb=run,
                           stream=names.STREAM_INPUTS)
        try:
            yield c
        finally:
            await nc.close()


NONFINITE = {"args": ["nan", "inf", "-inf", "1.5"]}
AS_STRINGS = ["NaN", "Infinity", "-Infinity", 1.5]


async def test_non_finite_results_are_answered_as_strings(client: httpx.AsyncClient) -> None:
    # Waited on (?wait=): the answer carries the result.
    r = await client.post(CALLS + "?wait=30", json=NONFINITE)
    assert r.status_code == 200, r.text
    assert strict_json(r)["result"] == AS_STRINGS
    # Read back by id, at once and long-polled.
    r = await client.post(CALLS, json=NONFINITE)
    assert r.status_code == 202, r.text
    call_id = r.json()["call_id"]
    r = await client.get(f"/v1/calls/{call_id}?wait=30")
    assert r.status_code == 200, r.text
    assert strict_json(r) == {"call_id": call_id, "status": "success", "result": AS_STRINGS}
    r = await client.get(f"/v1/calls/{call_id}")
    assert r.status_code == 200 and strict_json(r)["result"] == AS_STRINGS
    # As a generator's items, and with its final answer.
    r = await client.get(f"/v1/calls/{call_id}/items?wait=30")
    assert r.status_code == 200, r.text
    body = strict_json(r)
    assert body["items"] == AS_STRINGS
    r = await client.get(f"/v1/calls/{call_id}/items?wait=30&cursor={body['cursor']}")
    assert r.status_code == 200 and strict_json(r)["final"]["result"] == AS_STRINGS
    # A map's results page (before: NaN silently became null).
    r = await client.post("/v1/apps/inp/functions/f/maps",
                          json={"inputs": [NONFINITE, {"args": ["2"]}]})
    assert r.status_code == 202, r.text
    map_id = r.json()["map_id"]
    page: dict[str, Any] = {"results": []}
    deadline = time.monotonic() + 60
    while len(page["results"]) < 2 and time.monotonic() < deadline:
        r = await client.get(f"/v1/maps/{map_id}/results?wait=5")
        assert r.status_code == 200, r.text
        page = strict_json(r)
    assert [x["result"] for x in page["results"]] == [AS_STRINGS, [2.0]]


async def test_the_sdk_answer_keeps_non_finite_values(client: httpx.AsyncClient) -> None:
    """The SDK's msgpack answer carries the result's bytes as stored: nothing is lost."""
    r = await client.post(CALLS, json={"args": ["nan", "-inf"]})
    call_id = r.json()["call_id"]
    r = await client.get(f"/v1/calls/{call_id}?wait=30", headers={"Accept": MSGPACK})
    assert r.status_code == 200, r.text
    resp = msgspec.msgpack.decode(r.content, type=CallResponse)
    assert resp.payload_format == "json" and resp.payload == b"[NaN, -Infinity]"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [100_000, 5_000])
async def test_deeply_nested_json_is_a_400(client: httpx.AsyncClient, depth: int) -> None:
    json_ = {"Content-Type": "application/json"}
    cases = [
        ("POST", CALLS, b'{"args": ' + _nested(depth) + b"}"),
        ("POST", CALLS + "?wait=1", b'{"args": [], "kwargs": {"x": ' + _nested(depth) + b"}}"),
        ("POST", "/v1/apps/inp/functions/f/maps",
         b'{"inputs": [{"args": ' + _nested(depth) + b"}]}"),
        ("PUT", "/v1/budgets/default", _nested(depth)),
        ("POST", "/v1/webhooks", b'{"url": "http://127.0.0.1:9/", "events": '
         + _nested(depth) + b"}"),
    ]
    for method, path, body in cases:
        r = await client.request(method, path, content=body, headers=json_)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        err = strict_json(r)["error"]
        assert err["type"] == "InvalidInput" and "nested too deeply" in err["message"], err


async def test_deeply_nested_msgpack_is_a_400(client: httpx.AsyncClient) -> None:
    """The SDK's encoding: a field the gateway does not know is skipped, by recursion."""
    sdk = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    deep = msgspec.msgpack.encode("zzz") + b"\x91" * 100_000 + b"\xc0"
    for path, first_field in [
        (CALLS, msgspec.msgpack.encode("payload") + msgspec.msgpack.encode(b"x")),  # fast path
        (CALLS + "?wait=0&via=fastapi", msgspec.msgpack.encode("payload")
         + msgspec.msgpack.encode(b"x")),
        (CALLS + "/batch", msgspec.msgpack.encode("payloads") + msgspec.msgpack.encode([b"x"])),
        ("/v1/calls/wait", msgspec.msgpack.encode("calls") + msgspec.msgpack.encode([])),
        ("/v1/apps", msgspec.msgpack.encode("app") + msgspec.msgpack.encode("inp")),
        ("/v1/dicts", msgspec.msgpack.encode("op") + msgspec.msgpack.encode("len")),
        ("/v1/queues", msgspec.msgpack.encode("op") + msgspec.msgpack.encode("len")),
    ]:
        r = await client.post(path, content=b"\x82" + first_field + deep, headers=sdk)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        err = strict_json(r)["error"]
        assert err["type"] == "InvalidInput" and "nested too deeply" in err["message"], err


async def test_nesting_around_the_parsers_limit_never_gives_500(
        client: httpx.AsyncClient) -> None:
    """Just within what the parser reads, writing the arguments on needs a level more."""
    for depth in range(850, 1010, 4):
        for path, body in [(CALLS, b'{"args": ' + _nested(depth) + b"}"),
                           ("/v1/apps/inp/functions/f/maps",
                            b'{"inputs": [{"args": ' + _nested(depth) + b"}]}")]:
            r = await client.post(path, content=body,
                                  headers={"Content-Type": "application/json"})
            assert r.status_code in (202, 400), (path, depth, r.status_code, r.text[:300])


async def test_deeply_nested_results_never_give_500(client: httpx.AsyncClient) -> None:
    """A result nested deeper than the API answers (a container's JSON writer goes deeper
    than the gateway's stack allows) is answered as null with the reason, not a 500."""
    for depth, answered in [(400, True), (500, True), (501, False), (960, False),
                            (5000, False)]:
        r = await client.post(CALLS + "?wait=30", json={"kwargs": {"depth": depth}})
        assert r.status_code == 200, (depth, r.text[-300:])
        body = strict_json(r)
        call_id = body["call_id"]
        if answered:
            assert "result_error" not in body
            assert json.dumps(body["result"]) == "[" * depth + "]" * depth
        else:
            assert body["result"] is None and "500 levels" in body["result_error"], body
        r = await client.get(f"/v1/calls/{call_id}")
        assert r.status_code == 200 and strict_json(r) == body
        r = await client.get(f"/v1/calls/{call_id}/items?wait=30")
        assert r.status_code == 200
        items = strict_json(r)
        assert ("item_errors" in items) == (not answered), items.keys()
        r = await client.post("/v1/apps/inp/functions/f/maps",
                              json={"inputs": [{"kwargs": {"depth": depth}}]})
        map_id = r.json()["map_id"]
        page: dict[str, Any] = {"results": []}
        deadline = time.monotonic() + 60
        while not page["results"] and time.monotonic() < deadline:
            r = await client.get(f"/v1/maps/{map_id}/results?wait=5")
            assert r.status_code == 200, (depth, r.text[-300:])
            page = strict_json(r)
        assert ("result_error" in page["results"][0]) == (not answered)


async def test_text_that_is_not_unicode_never_gives_500(client: httpx.AsyncClient) -> None:
    """A lone surrogate (undecodable bytes, as os.fsdecode makes them, or JSON's
    "\\ud800") cannot be written as UTF-8: answers escape it, stores refuse it (400)."""
    r = await client.post(CALLS + "?wait=30", content=b'{"kwargs": {"text": "a\\udc80b"}}',
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == ["a\udc80b"] and b"\\udc80" in r.content
    r = await client.get(f"/v1/calls/{r.json()['call_id']}/items?wait=30")
    assert r.status_code == 200 and r.json()["items"] == ["a\udc80b"]
    json_ = {"Content-Type": "application/json"}
    for method, path, body, says in [
        ("POST", CALLS, b'{"args": [], "x\\ud800": 1}', "unknown keys"),
        ("PUT", "/v1/budgets/default", b'{"limit": 1, "period": "\\ud800"}', "period"),
        ("POST", "/v1/webhooks", b'{"url": "http://127.0.0.1:9/", "events": '
         b'["budget.exceeded"], "description": "\\ud800"}', "description"),
        ("POST", "/v1/webhooks", b'{"url": "http://127.0.0.1:9/\\ud800", "events": '
         b'["budget.exceeded"]}', "url"),
        ("POST", "/v1/webhooks", b'{"url": "http://127.0.0.1:9/", "events": ["\\ud800"]}',
         "unknown event"),
    ]:
        r = await client.request(method, path, content=body, headers=json_)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert says in r.json()["error"]["message"], r.text


BAD_NAMES = [">", "*", "a.b", "a b", "A", "-a", "a" * 64, "x\n", "é"]


@pytest.mark.parametrize("bad", BAD_NAMES)
async def test_names_are_checked_at_the_edge(client: httpx.AsyncClient, bad: str) -> None:
    routes = [
        ("GET", f"/v1/apps/{bad}/status", "app"),
        ("DELETE", f"/v1/apps/{bad}", "app"),
        ("GET", f"/v1/apps/{bad}/logs", "app"),
        ("POST", f"/v1/apps/{bad}/functions/f/calls", "app"),
        ("POST", f"/v1/apps/inp/functions/{bad}/calls", "function"),
        ("POST", f"/v1/apps/{bad}/functions/f/calls/batch", "app"),
        ("POST", f"/v1/apps/inp/functions/{bad}/maps", "function"),
        ("POST", f"/v1/apps/{bad}/functions/f/schedule/pause", "app"),
        ("POST", f"/v1/apps/inp/functions/{bad}/schedule/resume", "function"),
        ("GET", f"/v1/schedules?app={bad}", "app"),
    ]
    for method, path, kind in routes:
        url = httpx.URL("http://gw").join(path.replace("\n", "%0A"))
        r = await client.request(method, url, json={"args": []})
        assert r.status_code == 400, (method, path, r.status_code, r.text[:300])
        err = strict_json(r)["error"]
        assert err["type"] == "InvalidInput", err
        assert f"invalid {kind} name" in err["message"] and "1-63 characters" in err["message"]
        assert repr(bad)[:20] in err["message"], err


async def test_a_long_name_is_named_by_its_start_and_length(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/apps/" + "a" * 60_000 + "/status")
    assert r.status_code == 400
    msg = strict_json(r)["error"]["message"]
    assert "(60000 characters)" in msg and "1-63 characters" in msg and len(msg) < 400


async def test_a_malformed_map_id_is_not_found(client: httpx.AsyncClient) -> None:
    for map_id in ["mp->", "mp-a b", "mp-*", "mp-" + "0" * 32 + ".x"]:
        r = await client.get(f"/v1/maps/{map_id}/results")
        assert r.status_code == 404, (map_id, r.text)
        assert strict_json(r)["error"]["type"] == "NotFound"


async def test_a_non_finite_budget_is_refused(client: httpx.AsyncClient) -> None:
    """Python's JSON reader takes Infinity; a budget of it could never be listed as JSON."""
    for raw in [b'{"limit": Infinity}', b'{"limit": NaN}', b'{"limit": 1e999}']:
        r = await client.put("/v1/budgets/default", content=raw,
                             headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        assert "limit" in strict_json(r)["error"]["message"]
    r = await client.get("/v1/budgets")
    assert r.status_code == 200 and strict_json(r)["budgets"] == []


async def test_an_idempotency_key_reused_with_another_body_is_a_422(
        client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "order-1234"}
    first = await client.post(CALLS + "?wait=30", json={"args": ["1"]}, headers=key)
    assert first.status_code == 200, first.text
    call_id = first.json()["call_id"]
    # The same body (spaced differently): the same call, replayed, not run again.
    again = await client.post(CALLS + "?wait=30", content=b'{ "args" : ["1"] }',
                              headers={**key, "Content-Type": "application/json"})
    assert again.status_code == 200 and again.json()["call_id"] == call_id
    assert again.headers.get("Idempotent-Replayed") == "true"
    # Another body: refused, naming the key.
    other = await client.post(CALLS + "?wait=30", json={"args": ["2"]}, headers=key)
    assert other.status_code == 422, other.text
    err = strict_json(other)["error"]
    assert err["type"] == "IdempotencyKeyReused" and "'order-1234'" in err["message"], err
    assert call_id in err["message"]
    # The SDK's encoding with the same key is another request too.
    sdk = await client.post(CALLS, content=msgspec.msgpack.encode(CallRequest(payload=b"x")),
                            headers={**key, "Content-Type": MSGPACK, "Accept": MSGPACK})
    assert sdk.status_code == 422
    # ...and the key still answers its first request.
    again = await client.post(CALLS, json={"args": ["1"]}, headers=key)
    assert again.status_code == 200 and again.json()["call_id"] == call_id
    # A different key is a new call.
    new = await client.post(CALLS + "?wait=30", json={"args": ["2"]},
                            headers={"Idempotency-Key": "order-1235"})
    assert new.status_code == 200 and new.json()["call_id"] != call_id
    assert new.json()["result"] == [2.0]


async def test_concurrent_resubmissions_make_one_call(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "burst-of-retries"}
    answers = await asyncio.gather(*[
        client.post(CALLS + "?wait=30", json={"args": ["3"]}, headers=key) for _ in range(8)])
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert len({r.json()["call_id"] for r in answers}) == 1


async def test_an_items_cursor_past_64_bits_is_a_400(client: httpx.AsyncClient) -> None:
    """Found by the schemathesis test (tests/integration/test_gateway_fuzz.py): NATS
    refused the stream sequence, a 500."""
    call_id = (await client.post(CALLS, json={"args": ["1"]})).json()["call_id"]
    r = await client.get(f"/v1/calls/{call_id}/items?cursor={2 ** 70}")
    assert r.status_code == 400, r.text
    assert "cursor" in strict_json(r)["error"]["message"]
    r = await client.get(f"/v1/calls/{call_id}/items?cursor={2 ** 64 - 2}")
    assert r.status_code == 200 and strict_json(r)["items"] == []


async def test_a_wait_of_nan_seconds_is_a_400(client: httpx.AsyncClient) -> None:
    """NaN passed every bound of the SDK's wait request, which then waited forever."""
    for field in ("wait", "linger"):
        req = CallWaitRequest(calls=[CallRef(call_id="fc-" + "0" * 32, attempt_token="x")],
                              **{field: math.nan})
        r = await asyncio.wait_for(client.post(
            "/v1/calls/wait", content=msgspec.msgpack.encode(req),
            headers={"Content-Type": MSGPACK, "Accept": MSGPACK}), 30)
        assert r.status_code == 400, r.text
        assert strict_json(r)["error"]["message"].startswith(f"{field}=nan")


@pytest.mark.parametrize(("field", "change", "named"), [
    ("cpu", {"resources": {"cpu": math.nan}}, "cpu=nan"),
    ("memory", {"resources": {"memory_mb": -1}}, "memory=-1"),
    ("gpu", {"resources": {"gpu_type": "H101", "gpu_count": 1}}, "H101"),
    ("max_inputs", {"max_inputs": 0}, "max_inputs=0"),
    ("retries", {"retries": {"max_retries": 1, "initial_delay": math.inf}}, "initial_delay"),
])
async def test_a_deploy_outside_the_sdks_ranges_is_refused(
        client: httpx.AsyncClient, field: str, change: dict[str, Any], named: str) -> None:
    """A deploy request not made by the SDK (whose checks it skips) meets the same ranges:
    a NaN CPU used to be stored and reach placement and billing."""
    fn = {"name": "g", "module": "m", "qualname": "g", **change}
    body = msgspec.msgpack.encode({"app": "lim", "bundle_hash": "0" * 64, "functions": [fn]})
    r = await client.post("/v1/apps", content=body, headers={"Content-Type": MSGPACK})
    assert r.status_code == 400, (field, r.text)
    err = r.json()["error"]
    assert err["type"] == "InvalidInput" and "'g'" in err["message"], err
    assert named in err["message"], err
