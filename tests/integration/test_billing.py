"""Billing against a real nats-server: the service runs in-process via ``run(settings, stop)``."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from burst_billing.ledger_writer import LedgerWriter, Superseded
from burst_billing.service import run
from burst_billing.settings import BillingSettings
from burst_core import bus, ledger, names
from burst_core.schemas import (
    LeaseRecordDecoder,
    LedgerSnapshot,
    MeteringRecord,
    Resources,
    ServiceHeartbeatDecoder,
    encode,
)

pytestmark = pytest.mark.integration

# Recent: a record that ended a dedupe horizon before it reached the stream is refused.
T0 = time.time() - 3600.0
Seqd = list[tuple[int, MeteringRecord]]


def rec(container: str, interval: int, *, ws: str = "acme", app: str = "shop",
        fn: str = "resize", final: bool = False, gpu: str | None = None,
        spot: bool = False) -> MeteringRecord:
    start = T0 + interval * 5.0 + random.random()
    return MeteringRecord(
        container_id=container, interval=interval, start=start,
        end=start + 5.0 - random.random(), workspace=ws, app=app, function=fn,
        agent_id="agent1", spot=spot, final=final,
        resources=Resources(cpu=0.5, gpu_type=gpu, gpu_count=1 if gpu else 0),
    )


def container_records(container: str, n: int, **kw: Any) -> list[MeteringRecord]:
    """Intervals 0..n-1 of one container, the last one final."""
    return [rec(container, i, final=(i == n - 1), **kw) for i in range(n)]


# Stream time of each published sequence (the ledger's clock), as stored: filled by
# publish(), read by reference(). Every test starts a fresh server, so seqs restart at 1.
STORED_AT: dict[int, float] = {}


async def publish(js: Any, records: Iterable[MeteringRecord], again: str = "") -> Seqd:
    """Publish as an agent does; ``again`` marks a republish beyond the dedupe window.

    JetStream would drop a same-id republish within its window, so a republish after it
    is simulated with another msg id: the ledger must dedupe it by identity on its own.
    """
    out: Seqd = []
    for r in records:
        ack = await bus.publish(js, names.metering_subject(r.workspace, r.agent_id), encode(r),
                                msg_id=f"{r.container_id}:{r.interval}{again}")
        assert not ack.duplicate
        stored = await js.get_msg(names.STREAM_METERING, ack.seq)
        STORED_AT[ack.seq] = ledger.stream_time(stored.time)
        out.append((ack.seq, r))
    return out


def reference(published: Seqd) -> LedgerSnapshot:
    """The uninterrupted fold of the same stream, in memory."""
    snap = LedgerSnapshot()
    for seq, r in sorted(published, key=lambda p: p[0]):
        ledger.apply(snap, seq, r, ledger.Rates(), STORED_AT[seq])
    return snap


def settings(nats_url: str, **kw: Any) -> BillingSettings:
    fast: dict[str, Any] = {"snapshot_interval": 0.1, "lease_ttl": 1.5,
                            "service_heartbeat_interval": 0.1}
    return BillingSettings(nats_url=nats_url, **{**fast, **kw})


@asynccontextmanager
async def billing(nats_url: str, **kw: Any) -> AsyncIterator[BillingSettings]:
    s = settings(nats_url, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(run(s, stop))
    try:
        yield s
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_seq(js: Any, seq: int, timeout: float = 15.0) -> LedgerSnapshot:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        snap = await ledger.load_snapshot(js)
        if snap.seq >= seq:
            return snap
        assert loop.time() < deadline, f"ledger stuck at seq {snap.seq}, want {seq}"
        await asyncio.sleep(0.05)


async def wait_folded(js: Any, s: BillingSettings, seq: int, timeout: float = 15.0) -> None:
    """Wait until the writer has folded ``seq`` (its heartbeat says so), saved or not."""
    kv = await js.key_value(names.KV_SERVICES)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value, _ = await bus.kv_get(kv, names.service_key("billing", s.instance))
        if value and int(ServiceHeartbeatDecoder.decode(value).info.get("seq", 0)) >= seq:
            return
        assert loop.time() < deadline, f"billing never folded seq {seq}"
        await asyncio.sleep(0.05)


def totals(snap: LedgerSnapshot) -> dict[str, tuple[float, float, int]]:
    return {k: (v.seconds, v.cost, v.records) for k, v in snap.lines.items()}


async def test_redelivered_records_change_nothing(js: Any, nats_url: str) -> None:
    first = await publish(js, container_records("c1", 6) + container_records("c2", 4, fn="thumb"))
    other = await publish(js, container_records("c3", 5, ws="rival", gpu="H100"))
    again = await publish(js, [r for _, r in first[::2] + other], again=":again")
    async with billing(nats_url):
        snap = await wait_seq(js, again[-1][0])
    unique = reference(first + other)
    assert totals(snap) == totals(unique)
    assert sum(v.records for v in snap.lines.values()) == 15
    assert snap.closed == {"c1": 5, "c2": 3, "c3": 4} and snap.seen == {}
    # The same ledger, read as the gateway does: each workspace sees only its own lines.
    got = await ledger.load_snapshot(js)
    acme = ledger.report(got, "acme", by="function")
    assert [(r["function"], r["records"]) for r in acme] == [("resize", 6), ("thumb", 4)]
    rival = ledger.report(got, "rival")
    assert [(r["app"], r["records"]) for r in rival] == [("shop", 5)]
    assert rival[0]["cost"] == pytest.approx(unique.lines["rival.shop.resize"].cost)


async def test_restart_resumes_at_the_saved_sequence(js: Any, nats_url: str) -> None:
    part1 = await publish(js, container_records("c1", 10) + container_records("c2", 8)[:5])
    # No periodic save within the test: only the save at shutdown can store the position.
    async with billing(nats_url, snapshot_interval=600) as s:
        await wait_folded(js, s, part1[-1][0])
    saved = await ledger.load_snapshot(js)
    assert saved.seq == part1[-1][0]
    part2 = await publish(js, container_records("c2", 8)[5:] + container_records("c3", 7))
    dupes = await publish(js, [r for _, r in part1[3:9]], again=":after-restart")
    # Drop everything folded already: only a writer that resumes from the saved snapshot
    # (not from sequence 1, not from an empty ledger) can still reach the right totals.
    await js.purge_stream(names.STREAM_METERING, seq=saved.seq + 1)
    async with billing(nats_url):
        snap = await wait_seq(js, dupes[-1][0])
        # The first run's ephemeral consumer may linger a moment (it started at 1).
        # (The error-rate monitor reads the stream too, with consumers of its own.)
        starts = {c.config.opt_start_seq for c in await js.consumers_info(names.STREAM_METERING)
                  if not c.name.startswith(names.error_rate_consumer(""))}
        assert saved.seq + 1 in starts and starts <= {1, saved.seq + 1}
    uninterrupted = reference(part1 + part2 + dupes)
    assert ledger.fingerprint(snap) == ledger.fingerprint(uninterrupted)
    assert sum(v.records for v in snap.lines.values()) == 10 + 8 + 7


async def test_full_replay_into_an_empty_snapshot_is_identical(js: Any, nats_url: str) -> None:
    records = [r for c in range(12) for r in container_records(
        f"c{c}", 3 + c % 5, fn=f"f{c % 3}", gpu=[None, "A10G", "B200"][c % 3], spot=c % 2 == 0)]
    random.Random(3).shuffle(records)  # finals before earlier intervals, gaps filled later
    published = await publish(js, records[:30])
    await bus.publish(js, names.metering_subject("acme", "agent1"), b"\xc1 not msgpack")
    published += await publish(js, records[30:])
    published += await publish(js, records[::4], again=":again")
    last = published[-1][0]
    async with billing(nats_url):
        first = await wait_seq(js, last)
    kv = await js.key_value(names.KV_LEDGER)
    await kv.delete(names.LEDGER_STATE_KEY)
    assert (await ledger.load_snapshot(js)).seq == 0
    async with billing(nats_url):
        replayed = await wait_seq(js, last)
    assert ledger.fingerprint(replayed) == ledger.fingerprint(first)
    assert ledger.fingerprint(replayed) == ledger.fingerprint(reference(published))
    assert len(replayed.closed) == 12 and replayed.seen == {} and replayed.seen_through == {}


async def test_only_the_lease_holder_folds_and_a_standby_takes_over(
    js: Any, nats_url: str
) -> None:
    part1 = await publish(js, container_records("c1", 5))
    services = await js.key_value(names.KV_SERVICES)
    leases = await js.key_value(names.KV_LEASES)

    async def lease_holder() -> str:
        return LeaseRecordDecoder.decode((await leases.get(names.LEASE_BILLING)).value).holder

    async def leader_flag(s: BillingSettings) -> str:
        entry = await services.get(names.service_key("billing", s.instance))
        return ServiceHeartbeatDecoder.decode(entry.value).info["leader"]

    a, b = settings(nats_url), settings(nats_url)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(run(a, stop_a))
    try:
        await wait_seq(js, part1[-1][0])
        task_b = asyncio.create_task(run(b, stop_b))
        try:
            await asyncio.sleep(1.0)  # several renewals and heartbeats of both
            assert await lease_holder() == a.instance
            assert (await leader_flag(a), await leader_flag(b)) == ("true", "false")
            stop_a.set()
            await asyncio.wait_for(task_a, 15)
            # a released the lease: b carries on from a's saved ledger.
            part2 = await publish(js, container_records("c2", 4))
            snap = await wait_seq(js, part2[-1][0])
            assert await lease_holder() == b.instance
        finally:
            stop_b.set()
            await asyncio.wait_for(task_b, 15)
    finally:
        stop_a.set()
        await asyncio.wait_for(task_a, 15)
    assert ledger.fingerprint(await ledger.load_snapshot(js)) == ledger.fingerprint(
        reference(part1 + part2))
    assert totals(snap) == totals(reference(part1 + part2))


async def test_superseded_writer_stops_without_overwriting(js: Any) -> None:
    published = await publish(js, container_records("c1", 3))
    writer = LedgerWriter(js, ledger.Rates(), snapshot_interval=0.05)
    until = asyncio.Event()
    task = asyncio.create_task(writer.run(until))
    await wait_seq(js, published[-1][0])
    # Another writer (that took over while this one was cut off) saves in between.
    kv = await js.key_value(names.KV_LEDGER)
    newer = reference(published)
    newer.updated_at = 1.0
    await kv.put(names.LEDGER_STATE_KEY, encode(newer))
    await publish(js, container_records("c2", 2))
    with pytest.raises(Superseded):
        await asyncio.wait_for(task, 5)
    assert (await ledger.load_snapshot(js)).updated_at == 1.0


async def test_a_ledger_over_a_kv_value_replays_identically(js: Any, nats_url: str) -> None:
    # 50 functions x 100 days: one day line each, ~1.4 MiB of ledger (a KV value: 1 MiB).
    t0 = time.time() - 100 * 86400
    records = [MeteringRecord(container_id=f"c{f}-{d}", interval=0, start=t0 + d * 86400,
                              end=t0 + d * 86400 + 5.0, workspace="acme", app="shop",
                              function=f"fn{f}", agent_id="agent1", final=True,
                              resources=Resources(cpu=0.5, gpu_type="A10G", gpu_count=1))
               for d in range(100) for f in range(50)]
    acks = []
    for i in range(0, len(records), 500):
        acks += await asyncio.gather(*(
            bus.publish(js, names.metering_subject("acme", "agent1"), encode(r),
                        msg_id=f"{r.container_id}:0") for r in records[i:i + 500]))
    last = max(a.seq for a in acks)
    slow = {"dedupe_horizon": 400 * 86400.0}  # records of past months are not late
    async with billing(nats_url, **slow):
        first = await wait_seq(js, last, timeout=60)
    assert len(encode(first)) > 1 << 20 and len(first.days) == 5000
    cost = sum(ledger.record_cost(r, ledger.Rates()) for r in records)
    by_day = ledger.report(first, "acme", by="day")
    assert len(by_day) == 100 and round(sum(r["cost"] for r in by_day), 2) == round(cost, 2)
    assert sum(r["records"] for r in ledger.report(first, "acme", by="function")) == 5000
    kv = await js.key_value(names.KV_LEDGER)
    await kv.delete(names.LEDGER_STATE_KEY)
    assert (await ledger.load_snapshot(js)).seq == 0
    async with billing(nats_url, **slow):
        replayed = await wait_seq(js, last, timeout=60)
    assert ledger.fingerprint(replayed) == ledger.fingerprint(first)
