"""Runaway containers and error rates against a real nats-server: billing runs in-process;
the test publishes what agents publish (heartbeats, outputs) and a receiver on loopback
verifies every delivery's signature."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from burst import webhooks as signing
from burst_core import alerts, bus, names
from burst_core.schemas import (
    AgentHeartbeat,
    AlertStateDecoder,
    CallRecord,
    ContainerView,
    DeploymentRecord,
    FunctionSpec,
    Output,
    encode,
)
from tests.integration.test_billing import billing
from tests.integration.test_budgets import FAST, add_endpoint, receiving, until

pytestmark = pytest.mark.integration

T = 1_000_000.0  # the agent's clock: only differences between its readings matter


async def deploy(js: Any, ws: str, app: str, timeouts: dict[str, float]) -> None:
    d = DeploymentRecord(workspace=ws, app=app, deployment_id="d1", bundle_hash="x",
                         created_at=time.time(), functions=[
                             FunctionSpec(name=fn, module="m", qualname=fn, timeout=t)
                             for fn, t in timeouts.items()])
    await (await js.key_value(names.KV_DEPLOYMENTS)).put(names.deployment_key(ws, app),
                                                        encode(d))


async def heartbeat(js: Any, agent: str, at: float, *views: ContainerView) -> None:
    hb = AgentHeartbeat(agent_id=agent, at=at, containers=list(views))
    await (await js.key_value(names.KV_HEARTBEATS)).put(agent, encode(hb))


async def detector_live(js: Any, rx: Any, agent: str) -> None:
    """Wait until billing's leader watches heartbeats: a stopping sentinel container on
    ``agent``, reported again with a later clock, until its runaway arrives."""
    n, at = len(rx.events), T
    deadline = time.monotonic() + 15
    while len(rx.events) == n:
        assert time.monotonic() < deadline, "the runaway detector never started"
        await heartbeat(js, agent, at, stopping(f"sentinel-{agent}", "quick"))
        at += 30
        await asyncio.sleep(0.1)


def busy(cid: str, fn: str, since: float) -> ContainerView:
    return ContainerView(container_id=cid, fn_key=f"acme.shop.{fn}", state="busy",
                         in_flight=1, busy_since=since)


def stopping(cid: str, fn: str) -> ContainerView:
    return ContainerView(container_id=cid, fn_key=f"acme.shop.{fn}", state="stopping")


async def test_runaway_fires_once_per_container_past_the_multiple(js: Any,
                                                                  nats_url: str) -> None:
    secret = signing.new_secret()
    await deploy(js, "acme", "shop", {"slow": 10.0, "quick": 10.0})
    async with receiving(secret) as rx:
        await add_endpoint(js, "acme", rx.url, secret, events=(alerts.EVENT_RUNAWAY,))
        # Factor 2 of a 10 s timeout: 20 s of running, or of stopping, is a runaway.
        async with billing(nats_url, **FAST, runaway_factor=2.0):
            await detector_live(js, rx, "a0")
            await heartbeat(js, "a1", T, busy("run1", "slow", T), stopping("stop1", "quick"),
                            busy("ok1", "quick", T), busy("nodeploy", "gone", T))
            await heartbeat(js, "a1", T + 19.5, busy("run1", "slow", T),
                            stopping("stop1", "quick"), busy("ok1", "quick", T),
                            busy("nodeploy", "gone", T))
            # ok1 finished its input and took another one at T + 19: not a long run.
            # nodeploy's function is unknown: the default timeout (300 s) applies.
            await heartbeat(js, "a1", T + 25, busy("run1", "slow", T),
                            stopping("stop1", "quick"), busy("ok1", "quick", T + 19),
                            busy("nodeploy", "gone", T))
            await until(lambda: len(rx.events) == 3, what="two runaways")
            # Still running, still stopping: nothing fires twice.
            await heartbeat(js, "a1", T + 40, busy("run1", "slow", T),
                            stopping("stop1", "quick"), busy("ok1", "quick", T + 35),
                            busy("nodeploy", "gone", T))
            # A container seen stopping only now has its own clock; a sentinel that fires
            # after it proves the heartbeat before was checked.
            await heartbeat(js, "a2", T, stopping("late", "quick"))
            await heartbeat(js, "a2", T + 15, stopping("late", "quick"))
            await heartbeat(js, "a2", T + 21, stopping("late", "quick"))
            await until(lambda: len(rx.events) == 4, what="the sentinel")
        # A new leader re-reads the same heartbeats: the marks keep it quiet.
        async with billing(nats_url, **FAST, runaway_factor=2.0):
            await detector_live(js, rx, "a9")
            await heartbeat(js, "a1", T + 60, busy("run1", "slow", T),
                            stopping("stop1", "quick"))
            await heartbeat(js, "a3", T, stopping("sentinel2", "quick"))
            await heartbeat(js, "a3", T + 30, stopping("sentinel2", "quick"))
            await until(lambda: len(rx.events) == 6, what="the second sentinel")
            await asyncio.sleep(0.3)
    got = [(e["data"]["container_id"], e["data"]["reason"]) for e in rx.events]
    assert got[0] == ("sentinel-a0", "alive_after_stop")
    assert sorted(got[1:3]) == [("run1", "input_overran"), ("stop1", "alive_after_stop")]
    assert got[3:] == [("late", "alive_after_stop"), ("sentinel-a9", "alive_after_stop"),
                       ("sentinel2", "alive_after_stop")]
    first = next(e for e in rx.events if e["data"]["container_id"] == "run1")
    assert first["type"] == "container.runaway_detected" and first["workspace"] == "acme"
    assert first["data"]["timeout"] == 10.0 and first["data"]["seconds"] == 25.0
    assert first["data"]["function"] == "slow" and first["data"]["agent_id"] == "a1"
    assert rx.rejected == 0 and len(set(rx.ids)) == 6


async def call(js: Any, call_id: str, fn: str, status: str, container: str = "c1") -> None:
    rec = CallRecord(call_id=call_id, workspace="acme", app="shop", function=fn,
                     input_id=f"in-{call_id}", attempt_token="tok", created_at=time.time())
    await (await js.key_value(names.KV_CALLS)).put(call_id, encode(rec))
    out = Output(call_id=call_id, input_id=f"in-{call_id}", attempt_token="tok",
                 status=status, container_id=container)  # type: ignore[arg-type]
    await bus.publish(js, names.output_subject(call_id, 1), encode(out),
                      msg_id=f"in-{call_id}:1")


async def crossed(js: Any, fn: str) -> bool | None:
    raw, _ = await bus.kv_get(await js.key_value(names.KV_ALERT_STATE),
                              names.alert_state_key("error_rate", f"acme.shop.{fn}"))
    return AlertStateDecoder.decode(raw).active if raw is not None else None


async def test_error_rate_fires_once_per_crossing(js: Any, nats_url: str) -> None:
    secret = signing.new_secret()
    rates = {"error_rate_window": 600.0, "error_rate_threshold": 0.5,
             "error_rate_min_calls": 4, "error_rate_interval": 0.2}
    async with receiving(secret) as rx:
        await add_endpoint(js, "acme", rx.url, secret, events=(alerts.EVENT_ERROR_RATE,))
        async with billing(nats_url, **FAST, **rates):
            for i in range(3):  # 3 of 3 failed, but fewer calls than min_calls
                await call(js, f"f{i}", "flaky", "failure")
            # Another function stays below: 2 failed of 5 (a cancelled call never counts).
            for i, st in enumerate(["success", "success", "failure", "success", "timeout",
                                    "terminated", "terminated"]):
                await call(js, f"g{i}", "steady", st, container="c2")
            await call(js, "f3", "flaky", "timeout")  # 4 of 4: crossed
            await until(lambda: len(rx.events) == 1, what="the first crossing")
            for i in range(4, 8):  # more failures, and a redelivered output: same crossing
                await call(js, f"f{i}", "flaky", "internal")
            await bus.publish(js, names.output_subject("f1", 2), encode(Output(
                call_id="f1", input_id="in-f1", attempt=2, attempt_token="t2",
                status="failure", container_id="c1")))
            for i in range(8, 17):  # 8 failed of 17: below the threshold, the crossing ends
                await call(js, f"f{i}", "flaky", "success")

            async def ended() -> bool:
                return await crossed(js, "flaky") is False
            await until(ended, what="the crossing to end")
            assert len(rx.events) == 1
            for i in range(17, 19):  # 9 of 18 at f17: crossed again
                await call(js, f"f{i}", "flaky", "failure")
            await until(lambda: len(rx.events) == 2, what="the second crossing")
        # A restart rebuilds the window from the stream: still crossed, nothing fires.
        async with billing(nats_url, **FAST, **rates):
            await call(js, "f19", "flaky", "failure")
            await asyncio.sleep(1.0)
            assert await crossed(js, "flaky") is True
    assert len(rx.events) == 2 and rx.rejected == 0
    assert {e["type"] for e in rx.events} == {"function.error_rate_exceeded"}
    first, second = rx.events
    assert first["data"]["function"] == "flaky"
    assert (first["data"]["failed"], first["data"]["calls"]) == (4, 4)
    assert (second["data"]["failed"], second["data"]["calls"]) == (9, 18)
    assert await crossed(js, "steady") is None
