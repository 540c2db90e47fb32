"""Runaway containers and error rates against a real nats-server: billing runs in-process;
the test publishes what agents publish (heartbeats, metering records) and a receiver on loopback
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
    AgentLost,
    AlertStateDecoder,
    ContainerView,
    DeploymentRecord,
    FunctionSpec,
    MeteringRecord,
    Resources,
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


async def meter(js: Any, fn: str, container: str, interval: int, succeeded: int = 0,
                failed: int = 0, again: str = "") -> None:
    """Publish what an agent publishes for ``container``'s ``interval``: a metering record
    with the calls it answered; ``again`` republishes it beyond the dedupe window."""
    now = time.time()
    rec = MeteringRecord(container_id=container, interval=interval, start=now - 1.0, end=now,
                         workspace="acme", app="shop", function=fn, agent_id="a1",
                         resources=Resources(), succeeded=succeeded, failed=failed)
    await bus.publish(js, names.metering_subject("acme", "a1"), encode(rec),
                      msg_id=f"{container}:{interval}{again}")


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
            await meter(js, "flaky", "c1", 0, failed=3)  # 3 of 3, fewer than min_calls
            # Another function stays below: 2 failed of 5 (an idle interval adds nothing).
            await meter(js, "steady", "c2", 0, succeeded=3, failed=2)
            await meter(js, "steady", "c2", 1)
            await meter(js, "flaky", "c3", 0, failed=1)  # 4 of 4: crossed
            await until(lambda: len(rx.events) == 1, what="the first crossing")
            # More failures, and the same record stored again: the same crossing.
            await meter(js, "flaky", "c1", 1, failed=4)
            await meter(js, "flaky", "c1", 1, failed=4, again=":late")
            await meter(js, "flaky", "c1", 2, succeeded=9)  # 8 of 17: the crossing ends

            async def ended() -> bool:
                return await crossed(js, "flaky") is False
            await until(ended, what="the crossing to end")
            assert len(rx.events) == 1
            await meter(js, "flaky", "c1", 3, failed=1)  # 9 of 18: crossed again
            await meter(js, "flaky", "c3", 1, failed=1)
            await until(lambda: len(rx.events) == 2, what="the second crossing")
        # A restart rebuilds the window from the stream: still crossed, nothing fires.
        async with billing(nats_url, **FAST, **rates):
            await meter(js, "flaky", "c1", 4, failed=1)
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
    return (w.failed, w.calls) if w else (0, 0)


async def monitor_consumers(js: Any) -> list[str]:
    return [c.name for c in await js.consumers_info(names.STREAM_METERING)
            if c.name.startswith(names.error_rate_consumer(""))]


async def alert_deliveries(js: Any) -> list[dict[str, Any]]:
    """The error-rate events queued for acme (no sender runs: they stay in the stream)."""
    state = (await js.stream_info(names.STREAM_WEBHOOKS)).state
    bodies = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        raw = await js.get_msg(names.STREAM_WEBHOOKS, seq)
        bodies.append(json.loads(WebhookDeliveryDecoder.decode(raw.data).body))
    return bodies


async def test_error_rate_reads_batches_counting_each_record_once(js: Any) -> None:
    await add_endpoint(js, "acme", "http://127.0.0.1:9/", "s", events=(alerts.EVENT_ERROR_RATE,))

    def monitor() -> ErrorRateMonitor:
        return ErrorRateMonitor(js, window=600.0, threshold=0.5, min_calls=10, interval=0.3,
                                poll=0.1)

    # Already in the stream at start: more than two batches for the first read, with idle
    # intervals and a lost agent's notice among them (skipped).
    backlog = 2 * BATCH + 37
    for i in range(backlog):
        await meter(js, "steady", f"c{i % 3}", i // 3, failed=1 if i % 4 == 0 else 0,
                    succeeded=0 if i % 4 == 0 else 1)
        if i % 50 == 0:
            await meter(js, "steady", "idle", i)
    await bus.publish(js, names.metering_lost_subject("a1"), encode(AgentLost(
        agent_id="a1", last_heartbeat_at=time.time(), lost_at=time.time())))
    want_steady = ((backlog + 3) // 4, backlog)
    m = monitor()
    await m.start()
    try:
        await until(lambda: counted(m, "steady") == want_steady, what="the backlog")
        # Records that arrive over several polls: each counts once, a record stored again
        # (republished after the dedupe window) not at all.
        for wave in range(4):
            for i in range(3 * wave, 3 * wave + 3):
                await meter(js, "flaky", "c9", i, failed=1 if i != 1 else 0,
                            succeeded=1 if i == 1 else 0)
            await meter(js, "steady", f"c{wave % 3}", wave // 3, failed=1, again=":late")
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
        # after the last record read, so nothing is counted twice or missed.
        (lost,) = await monitor_consumers(js)
        await js.delete_consumer(names.STREAM_METERING, lost)
        await meter(js, "flaky", "c9", 12, succeeded=3)
        await until(lambda: counted(m, "flaky") == (11, 15), what="the records after")
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
            await meter(js, "flaky", "c1", i, failed=i % 2, succeeded=1 - i % 2)
        await until(lambda: counted(m, "flaky") == (3, 6), what="the first records")
        (before,) = await monitor_consumers(js)
        # The consumer lives in the server's memory only: the restart loses it.
        await asyncio.to_thread(nats_server.restart)

        async def published() -> bool:
            try:
                await meter(js, "flaky", "c1", 6, failed=1)
            except Exception:
                return False
            return True
        await until(published, what="nats back")
        for i in range(7, 12):
            await meter(js, "flaky", "c1", i, failed=1)
        await until(lambda: counted(m, "flaky") == (9, 12), what="the records after")
        await asyncio.sleep(0.3)
        assert counted(m, "flaky") == (9, 12)
        (after,) = await monitor_consumers(js)
        assert after != before
        (event,) = await alert_deliveries(js)
        assert (event["data"]["failed"], event["data"]["calls"]) == (7, 10)
    finally:
        await m.stop()
    assert await monitor_consumers(js) == []
