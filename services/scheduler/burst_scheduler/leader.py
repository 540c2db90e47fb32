"""One deciding scheduler at a time: the ``scheduler`` lease in KV ``burst_leases``.

Every replica follows the cluster (KV watches, warm pools); only the lease holder runs
the decision loops (:meth:`Scheduler.start_decisions`). The holder renews every third of
``lease_ttl``; the others try as often, and take over once the lease has expired: a
leader killed with SIGKILL (it releases nothing) is replaced within ``lease_ttl`` plus
one try. A leader that cannot renew stops deciding when its last renewal runs out
(measured on its own monotonic clock, see :class:`burst_core.lease.Lease`), so two
replicas never decide at once for longer than clock drift allows; and even then, claims
are compare-and-set on agent records, so no resource is ever given twice.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from burst_core import logs
from burst_core.lease import Lease

log = logs.get("burst.scheduler.leader")


class Decider(Protocol):
    @property
    def deciding(self) -> bool: ...

    async def start_decisions(self) -> None: ...

    async def stop_decisions(self) -> None: ...


class Leadership:
    """Starts and stops ``decider``'s decision loops as ``lease`` is won and lost."""

    def __init__(self, lease: Lease, decider: Decider) -> None:
        self.lease = lease
        self.decider = decider
        self.interval = lease.ttl / 3
        self.terms = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Compete for the lease until ``stop`` is set; then step down and release it."""
        try:
            while not stop.is_set():
                held = await self.lease.acquire()
                await self._follow(held)
                # While leading, the local validity may run out before the next renewal
                # if renewals fail: wake up in time to step down.
                await _wait(stop, self.interval)
                if self.decider.deciding and not self.lease.held:
                    await self._follow(False)
        finally:
            await self._follow(False)
            await self.lease.release()

    async def _follow(self, held: bool) -> None:
        if held and not self.decider.deciding:
            self.terms += 1
            log.info("leader_elected", holder=self.lease.holder, term=self.terms)
            await self.decider.start_decisions()
        elif not held and self.decider.deciding:
            log.warning("leader_stepping_down", holder=self.lease.holder)
            await self.decider.stop_decisions()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()
