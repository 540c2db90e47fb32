"""Billing service: one replica at a time folds the metering stream into the ledger.

Every replica runs the liveness heartbeat, the webhook sender and the relay of lost
agents (shared durable consumers), and competes for the ``billing`` lease; the holder
runs a :class:`LedgerWriter` and evaluates budgets on its ledger until it stops, loses the
lease or is superseded, then the loop competes again. The others wait, ready to take over
within one lease TTL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext

from burst_billing import prices
from burst_billing.agents_lost import AgentLostRelay
from burst_billing.budgets import BudgetEvaluator
from burst_billing.error_rate import ErrorRateMonitor
from burst_billing.ledger_writer import LedgerWriter, Superseded
from burst_billing.runaway import RunawayDetector
from burst_billing.settings import BillingSettings
from burst_billing.webhooks import WebhookSender
from burst_core import budgets, bus, logs, names
from burst_core.lease import Lease
from burst_core.secrets import webhook_keys_path
from burst_core.service import heartbeat_loop

log = logs.get("burst.billing")


async def run(settings: BillingSettings, stop: asyncio.Event) -> None:
    """Run billing until ``stop`` is set; the ledger is saved before it returns."""
    rates = prices.load(settings.prices)  # a bad table stops billing before it connects
    nc = await bus.connect(settings.nats_url, f"billing-{settings.instance}", ca=settings.nats_ca)
    js = nc.jetstream()
    await bus.ensure_topology(js, settings.topology())
    await budgets.ensure(js)
    lease = Lease(
        await js.key_value(names.KV_LEASES), names.LEASE_BILLING, settings.instance,
        settings.lease_ttl,
    )
    writer: LedgerWriter | None = None

    def info() -> dict[str, str]:
        return {"leader": str(lease.held).lower(), "seq": str(writer.seq if writer else 0)}

    hb = asyncio.create_task(
        heartbeat_loop(js, "billing", settings.instance, settings.service_heartbeat_interval, info,
                       health_file=settings.health_file)
    )
    evaluator = BudgetEvaluator(js)
    sender = WebhookSender(
        js, allow=settings.webhook_allow_networks, retry_base=settings.webhook_retry_base,
        retry_max=settings.webhook_retry_max, max_attempts=settings.webhook_max_attempts,
        timeout=settings.webhook_timeout,
        keys_file=str(webhook_keys_path(settings.home, settings.webhook_keys_file)))
    relay = AgentLostRelay(js)
    renew_every = settings.lease_ttl / 3
    try:
        await evaluator.start()
        await sender.start()
        await relay.start()
        while not stop.is_set():
            if not await lease.acquire():
                await _wait(stop, renew_every)
                continue
            writer = LedgerWriter(js, rates, settings.snapshot_interval,
                                  settings.dedupe_horizon)
            evaluating = asyncio.create_task(
                _evaluate_budgets(writer, evaluator, settings.budget_interval))
            monitors = await _start_monitors(js, settings)
            try:
                await _lead(writer, lease, stop, renew_every)
            finally:
                evaluating.cancel()
                await asyncio.wait({evaluating}, timeout=5.0)
                for m in monitors:
                    await _quiet_stop(m)
    finally:
        for part in (relay, sender, evaluator):
            await _quiet_stop(part)
        hb.cancel()
        # Bounded: a task cancelled in the middle of a nats-py publish was seen to take
        # up to ~15 s to unwind; the liveness record expires with the service anyway.
        await asyncio.wait({hb}, timeout=1.0)
        await lease.release()
        await nc.drain()


async def _start_monitors(
    js: JetStreamContext, settings: BillingSettings
) -> list[RunawayDetector | ErrorRateMonitor]:
    """While leading: the runaway detector and the error-rate monitor (alerts only; a
    failure to start them is logged and retried at the next lead, never stops the fold)."""
    started: list[RunawayDetector | ErrorRateMonitor] = []
    for m in (RunawayDetector(js, settings.runaway_factor),
              ErrorRateMonitor(js, window=settings.error_rate_window,
                               threshold=settings.error_rate_threshold,
                               min_calls=settings.error_rate_min_calls,
                               interval=settings.error_rate_interval,
                               poll=settings.error_rate_poll)):
        try:
            await m.start()
        except Exception as e:
            log.exception("monitor_start_failed", part=type(m).__name__, error=repr(e))
            await _quiet_stop(m)
            continue
        started.append(m)
    return started


async def _quiet_stop(part: Any) -> None:
    try:
        await asyncio.wait_for(part.stop(), 5.0)
    except Exception as e:  # best effort: the process is going away
        log.warning("stop_failed", part=type(part).__name__, error=repr(e))


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


async def _evaluate_budgets(writer: LedgerWriter, evaluator: BudgetEvaluator,
                            interval: float) -> None:
    """While leading: evaluate budgets on the writer's ledger every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        if writer.loaded:
            try:
                await evaluator.evaluate(writer.snapshot)
            except Exception as e:  # NATS trouble: the next pass repeats it
                log.warning("budget_pass_failed", error=repr(e))


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
