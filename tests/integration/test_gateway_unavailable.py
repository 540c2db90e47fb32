"""While the gateway cannot reach NATS, every endpoint but the health check answers 503
``Unavailable`` with ``Retry-After`` at once (README: errors use 503), and answers as
usual once NATS is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from burst.wire import MSGPACK, CallRequest
from tests import gateway_inprocess as inproc
from tests.servers import Server

pytestmark = pytest.mark.integration

TOKEN = "bst_unavailable-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDK = {**AUTH, "Content-Type": MSGPACK, "Accept": MSGPACK}


@pytest.fixture
async def client(nats_server: Server, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = inproc.settings(nats_server.url, redis_url, str(tmp_path), TOKEN,
                             unavailable_retry_after=2.0)
    async with inproc.gateway(config, "down", timeout=30) as (c, gw):
        yield c, gw


async def _requests(c: httpx.AsyncClient) -> list[httpx.Response]:
    path = "/v1/apps/down/functions/f/calls"
    return [
        # The SDK's call (the fast path), the JSON call, a result, status, an app.
        await c.post(path + "?wait=1", content=msgspec.msgpack.encode(CallRequest(payload=b"x")),
                     headers=SDK),
        await c.post(path + "?wait=1", json={"args": [1]}, headers=AUTH),
        await c.get("/v1/calls/fc-nope", headers=AUTH),
        await c.get("/v1/status", headers=AUTH),
        await c.get("/v1/apps/down", headers=AUTH),
    ]


async def test_503_with_retry_after_while_nats_is_down(
        client: tuple[httpx.AsyncClient, Any], nats_server: Server) -> None:
    c, gw = client
    before = await _requests(c)
    assert [r.status_code for r in before[:2]] == [202, 202], [r.text for r in before]
    nats_server.stop()
    deadline = time.monotonic() + 10
    while gw.nc.is_connected:
        assert time.monotonic() < deadline, "the gateway never noticed NATS was gone"
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    down = await _requests(c)
    took = time.monotonic() - t0
    for r in down:
        assert r.status_code == 503, (r.request.url, r.status_code, r.text)
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["type"] == "Unavailable"
        assert "NATS" in r.json()["error"]["message"]
    assert took < 2.0, took  # at once, not after a NATS timeout each (5 s)
    health = await c.get("/healthz")
    assert health.status_code == 200 and health.json() == {"ok": False, "nats": False}
    await asyncio.to_thread(nats_server.restart)
    deadline = time.monotonic() + 15
    while not gw.nc.is_connected:
        assert time.monotonic() < deadline, "the gateway never reconnected"
        await asyncio.sleep(0.05)
    after = await _requests(c)
    assert [r.status_code for r in after[:2]] == [202, 202], [r.text for r in after]
