"""Benchmark: metering records folded into the ledger per second, beside the bare rate.

    .venv/bin/python bench/billing.py [--records 50000] [--batch 256]

Starts its own nats-server (temporary store), publishes ``--records`` metering records
(many containers, in-order intervals, a tenth redelivered past the dedupe window), then
measures in the same run, on the same stream:

- ``bare``: a durable pull consumer fetching ``--batch`` messages at a time and acking each
  (ack only, no decoding): the JetStream floor for reading the stream;
- ``fold``: the billing writer as deployed (:class:`burst_billing.ledger_writer.LedgerWriter`:
  ordered consumer from the saved sequence, decode, dedupe, price, per-day lines), from an
  empty ledger until it has folded the last record, with its periodic saves to KV;
- ``fold_fetch``: the same fold driven by fetches of ``--batch`` (acked), for comparison.

Prints one JSON object; ``ratio`` = fold / bare (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: E402

from burst_billing.ledger_writer import LedgerWriter  # noqa: E402
from burst_core import bus, ledger, names  # noqa: E402
from burst_core.schemas import LedgerSnapshot, MeteringRecord, Resources, encode  # noqa: E402
from tests.servers import start_nats  # noqa: E402


def records(n: int) -> list[MeteringRecord]:
    rng = random.Random(1)
    now = time.time() - 3600
    out = []
    per = 20
    for c in range(n // per + 1):
        gpu = rng.choice([None, "H100", "A10G"])
        for i in range(per):
            start = now + i * 5.0
            out.append(MeteringRecord(
                container_id=f"ctr-{c:07d}", interval=i, start=start, end=start + 5.0,
                workspace=f"ws{c % 5}", app=f"app{c % 11}", function=f"fn{c % 7}",
                agent_id=f"agent{c % 4}", spot=c % 3 == 0, final=i == per - 1,
                resources=Resources(cpu=1.0, memory_mb=2048, gpu_type=gpu,
                                    gpu_count=1 if gpu else 0)))
    return out[:n]


async def publish_all(js: object, recs: list[MeteringRecord]) -> int:
    sem = asyncio.Semaphore(512)
    last = 0

    async def one(r: MeteringRecord, suffix: str) -> None:
        nonlocal last
        async with sem:
            ack = await bus.publish(js, names.metering_subject(r.workspace, r.agent_id),  # type: ignore[arg-type]
                                    encode(r), msg_id=f"{r.container_id}:{r.interval}{suffix}")
            last = max(last, ack.seq)

    await asyncio.gather(*(one(r, "") for r in recs))
    await asyncio.gather(*(one(r, ":again") for r in recs[::10]))
    return last


async def bare(js: object, total: int, batch: int) -> float:
    cfg = ConsumerConfig(durable_name="bench_bare", ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL, max_ack_pending=batch * 4)
    await js.add_consumer(names.STREAM_METERING, cfg)  # type: ignore[attr-defined]
    psub = await js.pull_subscribe_bind("bench_bare", names.STREAM_METERING)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    seen = 0
    while seen < total:
        msgs = await psub.fetch(batch, timeout=5)
        for m in msgs:
            await m.ack()
        seen += len(msgs)
    return total / (time.perf_counter() - t0)


async def fold_fetch(js: object, total: int, batch: int) -> float:
    cfg = ConsumerConfig(durable_name="bench_fold", ack_policy=AckPolicy.EXPLICIT,
                         deliver_policy=DeliverPolicy.ALL, max_ack_pending=batch * 4)
    await js.add_consumer(names.STREAM_METERING, cfg)  # type: ignore[attr-defined]
    psub = await js.pull_subscribe_bind("bench_fold", names.STREAM_METERING)  # type: ignore[attr-defined]
    snap, rates = LedgerSnapshot(), ledger.Rates()
    t0 = time.perf_counter()
    seen = 0
    while seen < total:
        msgs = await psub.fetch(batch, timeout=5)
        for m in msgs:
            rec = ledger.MeteringMessageDecoder.decode(m.data)
            ledger.apply(snap, m.metadata.sequence.stream, rec, rates,
                         ledger.stream_time(m.metadata.timestamp))
            await m.ack()
        seen += len(msgs)
    return total / (time.perf_counter() - t0)


async def writer_fold(js: object, total: int) -> tuple[float, int]:
    w = LedgerWriter(js, ledger.Rates(), snapshot_interval=1.0)  # type: ignore[arg-type]
    until = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(w.run(until))
    while w.seq < total:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    until.set()
    await task
    counted = sum(line.records for line in w.snapshot.lines.values())
    return total / elapsed, counted


async def main(n: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = start_nats(Path(tmp) / "nats")
        try:
            nc = await bus.connect(srv.url, "bench")
            js = nc.jetstream()
            await bus.ensure_topology(js)
            recs = records(n)
            total = await publish_all(js, recs)
            bare_rate = await bare(js, total, batch)
            fold_rate, counted = await writer_fold(js, total)
            fetch_rate = await fold_fetch(js, total, batch)
            await nc.close()
        finally:
            srv.stop()
    assert counted == n, f"counted {counted} of {n} records"
    return {"records": n, "messages": total, "batch": batch,
            "bare_fetch_ack_per_s": round(bare_rate), "fold_per_s": round(fold_rate),
            "fold_fetch_ack_per_s": round(fetch_rate),
            "ratio": round(fold_rate / bare_rate, 3),
            "ratio_fetch": round(fetch_rate / bare_rate, 3)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    print(json.dumps(asyncio.run(main(a.records, a.batch))))
