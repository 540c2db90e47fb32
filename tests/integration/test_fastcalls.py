"""The SDK's call request answered without FastAPI's layers (``burst_gateway.fastcalls``)
answers exactly as the FastAPI route does, and only the SDK's form takes that path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from burst.wire import MSGPACK, CallRequest, CallResponse
from burst_gateway import fastcalls
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

TOKEN = "bst_fastcalls-test-token"
SDK = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MSGPACK, "Accept": MSGPACK}


@pytest.fixture
async def client(nats_url: str, redis_url: str, tmp_path) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    config = inproc.settings(nats_url, redis_url, str(tmp_path), TOKEN, max_body_bytes=4096)
    async with inproc.gateway(config, "fast") as (c, _):
        yield c


def _call(payload: bytes = b"x") -> bytes:
    return msgspec.msgpack.encode(CallRequest(payload=payload))


async def _both(client: httpx.AsyncClient, path: str, body: bytes,
                headers: dict[str, str]) -> tuple[httpx.Response, httpx.Response]:
    """The same request through the fast path and (an extra query parameter, which the
    route ignores) through FastAPI; asserts which path served each."""
    before = fastcalls.served
    fast = await client.post(path + "?wait=0", content=body, headers=headers)
    assert fastcalls.served == before + 1
    slow = await client.post(path + "?wait=0&via=fastapi", content=body, headers=headers)
    assert fastcalls.served == before + 1
    return fast, slow


async def test_fast_path_answers_as_the_route(client: httpx.AsyncClient) -> None:
    path = "/v1/apps/fast/functions/f/calls"
    # A call that nothing runs here: 202 with its id from both paths.
    fast, slow = await _both(client, path, _call(), SDK)
    assert fast.status_code == slow.status_code == 202
    assert fast.headers["content-type"] == slow.headers["content-type"] == MSGPACK
    a = msgspec.msgpack.decode(fast.content, type=CallResponse)
    b = msgspec.msgpack.decode(slow.content, type=CallResponse)
    assert a.status == b.status == "pending"
    assert a.call_id != b.call_id and a.call_id.startswith("fc-")
    # Errors: the same status and the same JSON body.
    cases = [
        (path, _call(), {**SDK, "Authorization": "Bearer bst_nope"}, 401),
        (path, _call(), {**SDK, "Authorization": ""}, 401),
        ("/v1/apps/fast/functions/nope/calls", _call(), SDK, 404),
        ("/v1/apps/gone/functions/f/calls", _call(), SDK, 404),
        (path, b"\xc1 not msgpack", SDK, 400),
        (path, msgspec.msgpack.encode({"payload": 5}), SDK, 400),
        (path, _call(b"y" * 5000), SDK, 413),
        # Names NATS cannot take, checked with the one rule on both paths (issue 12).
        ("/v1/apps/%3E/functions/f/calls", _call(), SDK, 400),
        ("/v1/apps/fast/functions/a.b/calls", _call(), SDK, 400),
        ("/v1/apps/" + "a" * 5000 + "/functions/f/calls", _call(), SDK, 400),
    ]
    for p, body, headers, status in cases:
        fast, slow = await _both(client, p, body, headers)
        assert fast.status_code == slow.status_code == status, (p, headers, fast.text)
        assert fast.json() == slow.json(), (fast.text, slow.text)
        assert fast.json()["error"]["message"]


async def test_other_forms_go_to_fastapi(client: httpx.AsyncClient) -> None:
    path = "/v1/apps/fast/functions/f/calls"
    before = fastcalls.served
    r = await client.post(path + "?wait=0", json={"args": [1]},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    r = await client.post(path, content=_call(), headers={**SDK, "Idempotency-Key": "k1"})
    assert r.status_code == 202
    r = await client.post(path + "?wait=-1", content=_call(), headers=SDK)
    assert r.status_code == 400 and "wait" in json.dumps(r.json())
    r = await client.post(path + "?wait=0", content=_call(),
                          headers={**SDK, "Accept": "application/json"})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    assert fastcalls.served == before
