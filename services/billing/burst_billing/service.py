"""Billing service: one replica at a time folds the metering stream into the ledger.

Every replica runs the liveness heartbeat and competes for the ``billing`` lease; the
holder runs a :class:`LedgerWriter` until it stops, loses the lease or is superseded,
then the loop competes again. The others wait, ready to take over within one lease TTL.
"""

from __future__ import annotations

import asyncio

from burst_billing import prices
from burst_billing.lease import Lease
from burst_billing.ledger_writer import LedgerWriter, Superseded
from burst_billing.settings import BillingSettings
from burst_core import bus, logs, names
from burst_core.service import heartbeat_loop

log = logs.get("burst.billing")


async def run(settings: BillingSettings, stop: asyncio.Event) -> None:
    """Run billing until ``stop`` is set; the ledger is saved before it returns."""
    rates = prices.load(settings.prices)  # a bad table stops billing before it connects
    nc = await bus.connect(settings.nats_url, f"billing-{settings.instance}")
    js = nc.jetstream()
    await bus.ensure_topology(js, bus.Topology(result_retention=settings.result_retention))
    lease = Lease(
        await js.key_value(names.KV_LEASES), names.LEASE_BILLING, settings.instance,
        settings.lease_ttl,
    )
    writer: LedgerWriter | None = None

    def info() -> dict[str, str]:
        return {"leader": str(lease.held).lower(), "seq": str(writer.seq if writer else 0)}

    hb = asyncio.create_task(
        heartbeat_loop(js, "billing", settings.instance, settings.service_heartbeat_interval, info)
    )
    renew_every = settings.lease_ttl / 3
    try:
        while not stop.is_set():
            if not await lease.acquire():
                await _wait(stop, renew_every)
                continue
            writer = LedgerWriter(js, rates, settings.snapshot_interval)
            await _lead(writer, lease, stop, renew_every)
    finally:
        hb.cancel()
        # Bounded: a task cancelled in the middle of a nats-py publish was seen to take
        # up to ~15 s to unwind; the liveness record expires with the service anyway.
        await asyncio.wait({hb}, timeout=1.0)
        await lease.release()
        await nc.drain()


async def _lead(
    writer: LedgerWriter, lease: Lease, stop: asyncio.Event, renew_every: float
) -> None:
    """Fold while this replica holds the lease; return when it should compete again."""
    done = asyncio.Event()
    task = asyncio.create_task(writer.run(done), name="billing-ledger-writer")
    try:
        while not stop.is_set() and not task.done():
            await _wait(stop, renew_every, task)
            if not stop.is_set() and not task.done() and not await lease.acquire():
                log.warning("ledger_writer_stopping", reason="lease lost")
                break
    finally:
        done.set()
        try:
            await task
        except Superseded as e:
            log.warning("ledger_writer_superseded", error=str(e))
            await lease.release()
        except Exception as e:  # NATS trouble: back off, then compete for the lease again
            log.exception("ledger_writer_failed", error=repr(e))
            await _wait(stop, 1.0)


async def _wait(
    stop: asyncio.Event, seconds: float, task: asyncio.Task[None] | None = None
) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set (or ``task`` ends)."""
    waiter = asyncio.create_task(stop.wait())
    aws: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]
    if task is not None:
        aws.add(task)  # type: ignore[arg-type]
    try:
        await asyncio.wait(aws, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
