"""The client reaper against a real nats-server: a silent client's run is stopped and its
inputs cancelled, but only time during which the store took writes and a gateway was live
counts as silence."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.js.errors
import pytest

from burst.wire import FunctionSpec
from burst_core import bus, calls, names
from burst_core.schemas import (
    ClientHeartbeat,
    DeploymentRecord,
    OutputDecoder,
    ServiceHeartbeat,
    encode,
)
from burst_scheduler.clients import ClientReaper
from burst_scheduler.state import ClusterState
from tests.servers import Server

pytestmark = pytest.mark.integration

WS = "ws"
CLIENT = "cl-" + "0123456789abcdef"
APP_ID = "ap-" + "fedcba9876543210"
TIMEOUT = 1.0
INTERVAL = 0.1


async def beat(js: Any, key: str, value: bytes) -> None:
    await (await js.key_value(names.KV_CLIENTS if key.startswith(WS) else
                              names.KV_SERVICES)).put(key, value)


async def gateway_alive(js: Any, at: float) -> None:
    hb = ServiceHeartbeat(service="gateway", instance="g1", at=at, started_at=at)
    await beat(js, names.service_key("gateway", "g1"), encode(hb))


async def passes(reaper: ClientReaper, seconds: float, before: Any = None) -> int:
    reaped = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if before is not None:
            await before()
        reaped += await reaper.run_once()
        await asyncio.sleep(INTERVAL)
    return reaped


async def test_silence_counts_only_while_the_store_and_a_gateway_are_up(
    js: Any, nats_server: Server
) -> None:
    state = ClusterState(heartbeat_timeout=10.0)
    dep = DeploymentRecord(workspace=WS, app=APP_ID, deployment_id="dp-1", bundle_hash="b" * 64,
                           functions=[FunctionSpec(name="f", module="m", qualname="f")],
                           created_at=time.time(), ephemeral=True, name="demo",
                           client_id=CLIENT)
    await (await js.key_value(names.KV_DEPLOYMENTS)).put(names.deployment_key(WS, APP_ID),
                                                          encode(dep))
    state.apply_deployment(names.deployment_key(WS, APP_ID), dep)
    fn_key = names.function_key(WS, APP_ID, "f")
    rec, inp = calls.build(WS, APP_ID, "f", "dp-1", b"payload", "pickle", time.time())
    await bus.publish(js, names.input_subject(fn_key), encode(inp), msg_id=inp.input_id)
    await beat(js, names.client_key(WS, CLIENT),
               encode(ClientHeartbeat(workspace=WS, client_id=CLIENT, at=time.time())))
    reaper = ClientReaper(js, state, TIMEOUT, INTERVAL, gateway_window=1.0)

    # No live gateway (its record is stale): nobody could beat, so nothing counts.
    await gateway_alive(js, time.time() - 60)
    assert await passes(reaper, 3 * TIMEOUT) == 0

    async def fresh() -> None:
        await gateway_alive(js, time.time())

    # The store down (nats-server killed): the reaper's passes fail, nothing counts.
    await fresh()
    await reaper.run_once()
    nats_server.proc.kill()
    nats_server.proc.wait(5)
    assert await passes(reaper, 3 * TIMEOUT) == 0
    nats_server.restart()
    await asyncio.sleep(1.0)  # the client reconnects
    start = time.monotonic()
    assert await passes(reaper, 0.3, fresh) == 0  # the silence starts counting only now

    # The client stays silent while both are up: its run is stopped after the deadline.
    reaped = await passes(reaper, 10 * TIMEOUT, fresh)
    assert reaped == 1
    took = time.monotonic() - start
    assert TIMEOUT - 0.2 <= took, took
    raw, _ = await bus.kv_get(await js.key_value(names.KV_DEPLOYMENTS),
                              names.deployment_key(WS, APP_ID))
    assert raw is None
    # Its queued input: cancelled (one terminated output) and purged from the queue.
    out = await js.get_last_msg(names.STREAM_OUTPUTS, names.output_subject(rec.call_id, 1))
    output = OutputDecoder.decode(out.data)
    assert output.status == "terminated" and output.error_type.endswith("InputCancellation")
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.get_last_msg(names.STREAM_INPUTS, names.input_subject(fn_key))
    clients = await js.key_value(names.KV_CLIENTS)
    assert (await bus.kv_get(clients, names.client_key(WS, CLIENT)))[0] is None


async def test_a_beating_client_keeps_its_run(js: Any) -> None:
    state = ClusterState(heartbeat_timeout=10.0)
    dep = DeploymentRecord(workspace=WS, app=APP_ID, deployment_id="dp-1", bundle_hash="b" * 64,
                           functions=[FunctionSpec(name="f", module="m", qualname="f")],
                           created_at=time.time(), ephemeral=True, name="demo",
                           client_id=CLIENT)
    state.apply_deployment(names.deployment_key(WS, APP_ID), dep)
    reaper = ClientReaper(js, state, TIMEOUT, INTERVAL, gateway_window=1.0)
    seq = 0

    async def alive() -> None:
        nonlocal seq
        seq += 1
        await gateway_alive(js, time.time())
        await beat(js, names.client_key(WS, CLIENT),
                   encode(ClientHeartbeat(workspace=WS, client_id=CLIENT, at=time.time(),
                                          seq=seq)))

    assert await passes(reaper, 4 * TIMEOUT, alive) == 0
