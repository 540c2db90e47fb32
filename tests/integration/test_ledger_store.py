"""The saved ledger in pieces, against a real nats-server: a ledger larger than a KV value
is saved and read back whole, a save rewrites what changed, readers never see a torn
ledger, and a superseded writer cannot damage its successor's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from burst_core import alerts, ledger, ledger_store, names
from burst_core.ledger_store import CHUNK_BYTES, LedgerStore, Superseded
from burst_core.schemas import LedgerSnapshot, MeteringRecord, Resources, encode

pytestmark = pytest.mark.integration

MIB = 1 << 20
T0 = time.time() - 100 * 86400  # a hundred days back: four months of day lines


def big_ledger(days: int = 100, functions: int = 50) -> LedgerSnapshot:
    """One record per function per day, folded: ~1.4 MiB encoded."""
    snap = LedgerSnapshot()
    seq = 0
    for d in range(days):
        for f in range(functions):
            seq += 1
            start = T0 + d * 86400
            r = MeteringRecord(container_id=f"c{f}-{d}", interval=0, start=start,
                               end=start + 5.0, workspace="acme", app="shop",
                               function=f"fn{f}", agent_id="a1", final=True,
                               resources=Resources(cpu=0.5, gpu_type="A10G", gpu_count=1))
            ledger.apply(snap, seq, r, ledger.Rates(), start + 10, 400 * 86400)
    return snap


async def raw_values(js: Any) -> dict[str, bytes]:
    kv = await js.key_value(names.KV_LEDGER)
    return {**await alerts.kv_values(kv, "part"),
            names.LEDGER_STATE_KEY: (await kv.get(names.LEDGER_STATE_KEY)).value}


async def test_a_ledger_larger_than_a_kv_value_round_trips(js: Any) -> None:
    snap = big_ledger()
    assert len(encode(snap)) > MIB
    store = LedgerStore(await js.key_value(names.KV_LEDGER))
    assert await store.load() == LedgerSnapshot()
    assert await store.save(snap) > MIB
    values = await raw_values(js)
    assert max(len(v) for v in values.values()) <= CHUNK_BYTES
    assert len(values) >= 1 + 4  # the header, the rest, one piece per month at least
    got = await ledger.load_snapshot(js)
    assert ledger.fingerprint(got) == ledger.fingerprint(snap)
    assert ledger.report(got, "acme", by="day") == ledger.report(snap, "acme", by="day")
    assert ledger.report(got, "acme", by="function") == ledger.report(snap, "acme",
                                                                      by="function")
    # A save after one more record of today rewrites the rest and the current month only.
    pieces = sum(len(g) for g in (await ledger_store.read(store.kv))[1].groups)  # type: ignore[union-attr]
    r = MeteringRecord(container_id="late", interval=0, start=T0 + 99 * 86400,
                       end=T0 + 99 * 86400 + 1, workspace="acme", app="shop", function="fn0",
                       agent_id="a1", resources=Resources())
    ledger.apply(snap, snap.seq + 1, r, ledger.Rates(), T0 + 99 * 86400 + 2, 400 * 86400)
    await store.save(snap)
    assert 2 <= store.last_written < pieces
    assert ledger.fingerprint(await ledger.load_snapshot(js)) == ledger.fingerprint(snap)
    # The pieces no header names were reused, not left behind: slots stay bounded.
    assert len(await raw_values(js)) <= 2 * pieces + 1


async def test_readers_never_see_a_torn_ledger(js: Any) -> None:
    snap = big_ledger(days=40, functions=60)
    for line in snap.days.values():
        line.records = snap.seq
    store = LedgerStore(await js.key_value(names.KV_LEDGER), chunk_bytes=64 * 1024)
    await store.load()
    await store.save(snap)
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            # Every line of every day changes with seq: a mix of two saves is detectable.
            snap.seq += 1
            for line in snap.days.values():
                line.records = snap.seq
            await store.save(snap)
            n += 1
        return n

    task = asyncio.create_task(writer())
    reads = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or reads < 5:
            got = await ledger.load_snapshot(js)
            assert {line.records for line in got.days.values()} == {got.seq}
            reads += 1
    finally:
        stop.set()
        saves = await task
    assert saves >= 2 and reads >= 5


async def test_a_superseded_writer_leaves_its_successor_intact(js: Any) -> None:
    kv = await js.key_value(names.KV_LEDGER)
    snap = big_ledger(days=40, functions=30)
    first = LedgerStore(kv, chunk_bytes=64 * 1024)
    await first.load()
    await first.save(snap)
    successor = LedgerStore(kv, chunk_bytes=64 * 1024)
    theirs = await successor.load()
    theirs.seq += 5
    for line in theirs.days.values():
        line.cost += 1.0
    await successor.save(theirs)
    # The old writer, cut off meanwhile, saves something else: refused, nothing damaged.
    snap.seq += 1
    for line in snap.days.values():
        line.seconds += 7.0
    with pytest.raises(Superseded):
        await first.save(snap)
    assert ledger.fingerprint(await ledger.load_snapshot(js)) == ledger.fingerprint(theirs)
    # The successor's next save drops the predecessor's pieces it no longer names.
    theirs.seq += 1
    for line in theirs.days.values():
        line.cost += 1.0
    await successor.save(theirs)
    left = [k for k in (await raw_values(js)) if k.startswith(f"part.{first.writer}.")]
    named = {p.key for g in (await ledger_store.read(kv))[1].groups for p in g}  # type: ignore[union-attr]
    assert set(left) <= named


async def test_a_whole_snapshot_saved_before_pieces_is_read_then_replaced(js: Any) -> None:
    kv = await js.key_value(names.KV_LEDGER)
    old = big_ledger(days=3, functions=3)
    await kv.put(names.LEDGER_STATE_KEY, encode(old))
    assert ledger.fingerprint(await ledger.load_snapshot(js)) == ledger.fingerprint(old)
    store = LedgerStore(kv)
    snap = await store.load()
    snap.seq += 1
    await store.save(snap)
    _, header, _ = await ledger_store.read(kv)
    assert header is not None and header.seq == old.seq + 1
    assert ledger.fingerprint(await ledger.load_snapshot(js)) == ledger.fingerprint(snap)
