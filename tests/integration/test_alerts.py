"""Runaway containers and error rates against a real nats-server: billing runs in-process;
the test publishes what agents publish (heartbeats, outputs) and a receiver on loopback
verifies every delivery's signature."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from burst import webhooks as signing
from burst_billing.error_rate import BATCH, ErrorRateMonitor
from burst_core import alerts, bus, names
from burst_core.schemas import (
    AgentHeartbeat,
    AlertStateDecoder,
    CallRecord,
    ContainerView,
    DeploymentRecord,
    FunctionSpec,
    Output,
    WebhookDeliveryDecoder,
    encode,
)
from tests.integration.test_billing import billing
from tests.integration.test_budgets import FAST, add_endpoint, receiving, until
from tests.servers import Server

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
             "error_rate_min_calls": 4, "error_rate_interval": 0.2, "error_rate_poll": 0.05}
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


def counted(m: ErrorRateMonitor, fn: str) -> tuple[int, int]:
    """(failed, calls) in ``fn``'s window as ``m`` counts them."""
    w = m.windows.get(f"acme.shop.{fn}")
    return (w.failed, len(w.calls)) if w else (0, 0)


async def monitor_consumers(js: Any) -> list[str]:
    return [c.name for c in await js.consumers_info(names.STREAM_OUTPUTS)
            if c.name.startswith(names.error_rate_consumer(""))]


async def alert_deliveries(js: Any) -> list[dict[str, Any]]:
    """The error-rate events queued for acme (no sender runs: they stay in the stream)."""
    state = (await js.stream_info(names.STREAM_WEBHOOKS)).state
    bodies = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        raw = await js.get_msg(names.STREAM_WEBHOOKS, seq)
        bodies.append(json.loads(WebhookDeliveryDecoder.decode(raw.data).body))
    return bodies


async def test_error_rate_reads_batches_counting_each_call_once(js: Any) -> None:
    await add_endpoint(js, "acme", "http://127.0.0.1:9/", "s", events=(alerts.EVENT_ERROR_RATE,))

    def monitor() -> ErrorRateMonitor:
        return ErrorRateMonitor(js, window=600.0, threshold=0.5, min_calls=10, interval=0.3,
                                poll=0.1)

    # Already in the stream at start: more than two batches for the first read.
    backlog = 2 * BATCH + 37
    for i in range(backlog):
        await call(js, f"s{i}", "steady", "failure" if i % 4 == 0 else "success",
                   container=f"c{i % 3}")
    want_steady = ((backlog + 3) // 4, backlog)
    m = monitor()
    await m.start()
    try:
        await until(lambda: counted(m, "steady") == want_steady, what="the backlog")
        # Outputs that arrive over several polls: each call counts once, a second output of
        # a call (another attempt) not at all.
        for wave in range(4):
            for i in range(3 * wave, 3 * wave + 3):
                await call(js, f"f{i}", "flaky", "failure" if i != 1 else "success",
                           container="c9")
            await bus.publish(js, names.output_subject(f"s{wave}", 2), encode(Output(
                call_id=f"s{wave}", input_id=f"in-s{wave}", attempt=2, attempt_token="t2",
                status="failure", container_id="c0")))
            await asyncio.sleep(0.25)
        await until(lambda: counted(m, "flaky") == (11, 12), what="the waves")
        await asyncio.sleep(0.3)  # more rounds, nothing new
        assert counted(m, "steady") == want_steady and counted(m, "flaky") == (11, 12)
        # Crossed at its 10th call (9 of 10 failed): one event.
        (event,) = await alert_deliveries(js)
        assert event["type"] == "function.error_rate_exceeded"
        assert (event["data"]["failed"], event["data"]["calls"]) == (9, 10)
        assert await crossed(js, "flaky") is True and await crossed(js, "steady") is None
        assert len(await monitor_consumers(js)) == 1
    finally:
        await m.stop()
    assert await monitor_consumers(js) == []  # stop deletes its consumer

    # A new monitor (a new leader) rebuilds the window from the stream: the same counts,
    # and the crossing it finds is the one already fired.
    m = monitor()
    await m.start()
    try:
        await until(lambda: counted(m, "flaky") == (11, 12), what="the rebuild")
        await until(lambda: counted(m, "steady") == want_steady, what="the rebuild")
        # Its consumer vanishes (an operator, an idle timeout): a new one goes on right
        # after the last output read, so nothing is counted twice or missed.
        (lost,) = await monitor_consumers(js)
        await js.delete_consumer(names.STREAM_OUTPUTS, lost)
        for i in range(12, 15):
            await call(js, f"f{i}", "flaky", "success", container="c9")
        await until(lambda: counted(m, "flaky") == (11, 15), what="the outputs after")
        await asyncio.sleep(0.3)
        assert counted(m, "steady") == want_steady and counted(m, "flaky") == (11, 15)
        (now,) = await monitor_consumers(js)
        assert now != lost
    finally:
        await m.stop()
    # The replay met the crossing again: the same event id, so nothing new was queued.
    assert await alert_deliveries(js) == [event]
    assert await crossed(js, "flaky") is True


async def test_error_rate_reading_survives_a_nats_restart(js: Any,
                                                          nats_server: Server) -> None:
    await add_endpoint(js, "acme", "http://127.0.0.1:9/", "s", events=(alerts.EVENT_ERROR_RATE,))
    m = ErrorRateMonitor(js, window=600.0, threshold=0.5, min_calls=10, interval=0.3,
                         poll=0.05)
    await m.start()
    try:
        for i in range(6):
            await call(js, f"f{i}", "flaky", "failure" if i % 2 else "success")
        await until(lambda: counted(m, "flaky") == (3, 6), what="the first outputs")
        (before,) = await monitor_consumers(js)
        # The consumer lives in the server's memory only: the restart loses it.
        await asyncio.to_thread(nats_server.restart)

        async def published() -> bool:
            try:
                await call(js, "f6", "flaky", "failure")
            except Exception:
                return False
            return True
        await until(published, what="nats back")
        for i in range(7, 12):
            await call(js, f"f{i}", "flaky", "failure")
        await until(lambda: counted(m, "flaky") == (9, 12), what="the outputs after")
        await asyncio.sleep(0.3)
        assert counted(m, "flaky") == (9, 12)
        (after,) = await monitor_consumers(js)
        assert after != before
        (event,) = await alert_deliveries(js)
        assert (event["data"]["failed"], event["data"]["calls"]) == (7, 10)
    finally:
        await m.stop()
    assert await monitor_consumers(js) == []
