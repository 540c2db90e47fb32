"""Budgets and webhooks against a real nats-server: billing runs in-process, a receiver
on loopback verifies every delivery's signature."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from burst import webhooks as signing
from burst_core import alerts, budgets, bus, ledger, names
from burst_core.schemas import (
    AgentLost,
    Budget,
    BudgetState,
    BudgetStateDecoder,
    MeteringRecord,
    Resources,
    WebhookEndpoint,
    WebhookLogEntryDecoder,
    encode,
)
from tests.integration.test_billing import billing, wait_seq

pytestmark = pytest.mark.integration

NOW = time.time()
FAST = {"webhook_allow_networks": "loopback", "webhook_retry_base": 0.2,
        "webhook_retry_max": 1.0, "webhook_max_attempts": 1000, "budget_interval": 0.1}


class Receiver:
    """A webhook receiver on 127.0.0.1 that can go down and come back on the same port."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.rejected = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers: dict[str, str] = {}
        await reader.readline()
        while (line := (await reader.readline()).decode().strip()):
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        try:
            event = signing.verify(body, headers, self.secret)
        except signing.WebhookVerificationError:
            self.rejected += 1
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        else:
            self.events.append(event)
            self.ids.append(headers["webhook-id"])
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()


def rec(container: str, interval: int, cost_seconds: float, *, ws: str = "acme",
        app: str = "shop", fn: str = "resize", final: bool = False) -> MeteringRecord:
    # One H100 at $0.0012/s: cost_seconds seconds cost cost_seconds * 0.0012 (+ a bit of CPU).
    start = NOW - 600 + interval * cost_seconds
    return MeteringRecord(container_id=container, interval=interval, start=start,
                          end=start + cost_seconds, workspace=ws, app=app, function=fn,
                          agent_id="agent1", final=final,
                          resources=Resources(cpu=0.0, gpu_type="H100", gpu_count=1))


async def publish(js: Any, records: list[MeteringRecord]) -> int:
    seq = 0
    for r in records:
        ack = await bus.publish(js, names.metering_subject(r.workspace, r.agent_id), encode(r),
                                msg_id=f"{r.container_id}:{r.interval}")
        seq = ack.seq
    return seq


async def add_endpoint(js: Any, ws: str, url: str, secret: str,
                       events: tuple[str, ...] = ("budget.threshold_crossed",
                                                  "budget.exceeded")) -> WebhookEndpoint:
    await budgets.ensure(js)
    ep = WebhookEndpoint(endpoint_id=f"ep_{ws}", workspace=ws, url=url, events=list(events),
                         secret=secret, created_at=time.time())
    await (await js.key_value(names.KV_WEBHOOKS)).put(names.webhook_key(ws, ep.endpoint_id),
                                                     encode(ep))
    return ep


async def set_budget(js: Any, ws: str, scope: str, limit: float, hard: bool = False,
                     alert_at: tuple[int, ...] = ()) -> None:
    await budgets.ensure(js)
    b = Budget(workspace=ws, scope=scope, limit=limit, hard=hard, alert_at=list(alert_at),
               created_at=time.time())
    await (await js.key_value(names.KV_BUDGETS)).put(budgets.key(ws, scope), encode(b))


async def state(js: Any, ws: str, scope: str) -> BudgetState | None:
    raw, _ = await bus.kv_get(await js.key_value(names.KV_BUDGET_STATE), budgets.key(ws, scope))
    return BudgetStateDecoder.decode(raw) if raw is not None else None


async def until(cond: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await cond() if asyncio.iscoroutinefunction(cond) else cond():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what or cond}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def receiving(secret: str) -> AsyncIterator[Receiver]:
    r = Receiver(secret)
    await r.start()
    try:
        yield r
    finally:
        with contextlib.suppress(Exception):
            await r.stop()


async def test_thresholds_alert_once_and_a_hard_cap_is_durable(js: Any, nats_url: str) -> None:
    secret = signing.new_secret()
    async with receiving(secret) as rx:
        await add_endpoint(js, "acme", rx.url, secret)
        await add_endpoint(js, "rival", rx.url.replace("/hooks", "/rival"), secret)
        # $0.012 limit = 10 H100-seconds; alerts at 50% and 100%.
        await set_budget(js, "acme", "shop", 0.012, hard=True, alert_at=(50, 100))
        await set_budget(js, "rival", "workspace", 1.0, hard=True, alert_at=(50,))
        async with billing(nats_url, **FAST):
            await publish(js, [rec("c1", 0, 3.0), rec("c1", 1, 3.0)])  # 6 s: 60%
            await until(lambda: len(rx.events) == 1, what="the 50% alert")
            last = await publish(js, [rec("c1", 2, 3.0), rec("c1", 3, 3.0, final=True),
                                      rec("r1", 0, 5.0, ws="rival")])  # 12 s: 120%
            await wait_seq(js, last)

            async def spent() -> bool:
                st = await state(js, "acme", "shop")
                return st is not None and st.exceeded and len(rx.events) == 3
            await until(spent, what="the cap and its alerts")
        st = await state(js, "acme", "shop")
        assert st is not None and st.spend == pytest.approx(12 * 0.0012)
        assert st.overshoot == pytest.approx(2 * 0.0012) and st.fired == [50, 100]
        kinds = sorted((e["type"], e["data"].get("threshold")) for e in rx.events)
        assert kinds == [("budget.exceeded", None), ("budget.threshold_crossed", 50),
                         ("budget.threshold_crossed", 100)]
        assert all(e["workspace"] == "acme" for e in rx.events) and rx.rejected == 0
        # Another workspace's budget saw only its own spend.
        rival = await state(js, "rival", "workspace")
        assert rival is not None and not rival.exceeded
        assert rival.spend == pytest.approx(5 * 0.0012)
        # A restart re-evaluates from the saved ledger: still exceeded, nothing fired again.
        async with billing(nats_url, **FAST):
            await asyncio.sleep(1.0)
        again = await state(js, "acme", "shop")
        assert again is not None and again.exceeded and len(rx.events) == 3


async def test_no_alert_is_lost_while_the_receiver_is_down(js: Any, nats_url: str) -> None:
    secret = signing.new_secret()
    rx = Receiver(secret)
    await rx.start()
    await rx.stop()  # down: its port is known, nothing listens
    await add_endpoint(js, "acme", rx.url, secret)
    await set_budget(js, "acme", "workspace", 0.012, alert_at=(25, 50, 75, 100))
    async with billing(nats_url, **FAST):
        for i in range(4):
            await publish(js, [rec("c1", i, 3.0)])
        logkv = await js.key_value(names.KV_WEBHOOK_LOG)

        async def retrying() -> bool:
            rows = [WebhookLogEntryDecoder.decode(v)
                    for v in (await alerts.kv_values(logkv, "acme")).values()]
            return len(rows) == 5 and all(r.attempts >= 2 for r in rows)
        await until(retrying, what="every delivery retried at least once")
    # Billing is down; then it restarts while the receiver is still down, for a while.
    async with billing(nats_url, **FAST):
        await asyncio.sleep(1.5)
        await rx.start()  # the receiver returns on the same port
        await until(lambda: len(set(rx.ids)) == 5, timeout=20, what="every alert delivered")
        await asyncio.sleep(0.5)
    kinds = sorted((e["type"], e["data"].get("threshold")) for e in rx.events)
    assert sorted(set(kinds)) == [("budget.exceeded", None)] + [
        ("budget.threshold_crossed", t) for t in (25, 50, 75, 100)]
    rows = [WebhookLogEntryDecoder.decode(v)
            for v in (await alerts.kv_values(await js.key_value(names.KV_WEBHOOK_LOG),
                                             "acme")).values()]
    assert {r.status for r in rows} == {"delivered"} and rx.rejected == 0
    await rx.stop()


async def test_refused_targets_are_logged_not_sent(js: Any, nats_url: str) -> None:
    secret = signing.new_secret()
    async with receiving(secret) as rx:
        await add_endpoint(js, "acme", rx.url, secret)
        meta = WebhookEndpoint(endpoint_id="ep_meta", workspace="acme",
                               url="http://169.254.169.254/latest/meta-data", events=[
                                   "budget.exceeded"], secret=secret)
        await (await js.key_value(names.KV_WEBHOOKS)).put("acme.ep_meta", encode(meta))
        await set_budget(js, "acme", "workspace", 0.001)
        # No allowlist: loopback is refused too.
        async with billing(nats_url, **{**FAST, "webhook_allow_networks": ""}):
            await publish(js, [rec("c1", 0, 3.0)])
            logkv = await js.key_value(names.KV_WEBHOOK_LOG)

            async def refused() -> bool:
                rows = [WebhookLogEntryDecoder.decode(v)
                        for v in (await alerts.kv_values(logkv, "acme")).values()]
                return len(rows) == 2 and {r.status for r in rows} == {"refused"}
            await until(refused, what="both deliveries refused")
        assert rx.events == []


async def test_lost_agent_closes_containers_and_replay_is_identical(
    js: Any, nats_url: str
) -> None:
    last = await publish(js, [rec("c1", 0, 5.0), rec("c1", 1, 5.0), rec("c2", 0, 5.0, fn="b")])
    lost = AgentLost(agent_id="agent1", last_heartbeat_at=NOW - 600 + 12.0,
                     lost_at=NOW - 600 + 20.0, container_ids=["c1"])
    async with billing(nats_url, **FAST):
        await bus.publish(js, names.agent_lost_subject("agent1"), encode(lost),
                          msg_id="lost-1")
        await wait_seq(js, last + 1)
        # A late record of the closed container is not counted.
        late = await publish(js, [rec("c1", 2, 5.0)])
        first = await wait_seq(js, late)
    line = first.lines["acme.shop.resize"]
    assert line.seconds == pytest.approx(12.0) and line.lost_unaccounted_seconds == 8.0
    # c2 is not named in the event, but its records came from the lost agent: closed too.
    assert set(first.closed) == {"c1", "c2"} and not first.open
    assert first.lines["acme.shop.b"].lost_containers == 1
    await (await js.key_value(names.KV_LEDGER)).delete(names.LEDGER_STATE_KEY)
    async with billing(nats_url, **FAST):
        replayed = await wait_seq(js, late)
    assert ledger.fingerprint(replayed) == ledger.fingerprint(first)
