"""A lease in KV: at most one replica at a time holds a singleton role.

The value is a :class:`LeaseRecord` (holder, expiry in epoch seconds), written only by
compare-and-set: a replica takes the lease when it is free, expired or already its own,
and renews it well before it expires. Locally, the holder counts the lease as held
until ``ttl`` after its last successful write, measured on the monotonic clock, so a
replica cut off from NATS gives up its role on time even though it cannot hear about a
successor.

A lease keeps replicas from doing the same work twice; it is not what keeps their
results consistent: writes that must not interleave are fenced by compare-and-set on
their own entries (billing's ledger snapshot; the scheduler's claims on agent records).

Used by billing (``names.LEASE_BILLING``: one ledger writer) and the scheduler
(``names.LEASE_SCHEDULER``: one replica runs the decision loops).
"""

from __future__ import annotations

import asyncio
import time

from nats.js.kv import KeyValue

from burst_core import bus, logs
from burst_core.schemas import LeaseRecord, LeaseRecordDecoder, encode

log = logs.get("burst.lease")


class Lease:
    """The lease ``key`` in bucket ``kv``, as seen by replica ``holder``."""

    def __init__(self, kv: KeyValue, key: str, holder: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl={ttl!r}: must be > 0 seconds")
        self.kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._valid_until = 0.0  # monotonic

    @property
    def held(self) -> bool:
        """Whether this replica may act as the holder right now."""
        return time.monotonic() < self._valid_until

    async def acquire(self) -> bool:
        """Take or renew the lease; True when this replica holds it afterwards.

        A NATS error leaves the local view as it was: a holder keeps its role until its
        last renewal runs out, then gives it up.
        """
        started = time.monotonic()

        def take(cur: bytes | None) -> bytes | None:
            now = time.time()
            acquired_at = now
            if cur is not None:
                rec = LeaseRecordDecoder.decode(cur)
                if rec.holder != self.holder and rec.expires_at > now:
                    return None  # someone else's, still running
                if rec.holder == self.holder:
                    acquired_at = rec.acquired_at
            return encode(
                LeaseRecord(holder=self.holder, expires_at=now + self.ttl, acquired_at=acquired_at)
            )

        try:
            written, _ = await bus.kv_cas(self.kv, self.key, take)
        except Exception as e:  # NATS unreachable or contended: keep the current view
            log.warning("lease_write_failed", key=self.key, error=repr(e))
            return self.held
        was_held = self.held
        if written is None:
            self._valid_until = 0.0
            if was_held:
                log.warning("lease_lost", key=self.key, holder=self.holder)
            return False
        # Counted from before the write: never past the expiry others see.
        self._valid_until = started + self.ttl
        if not was_held:
            log.info("lease_acquired", key=self.key, holder=self.holder)
        return True

    async def release(self) -> None:
        """Give the lease up now if this replica holds it, so a successor need not wait."""
        if not self.held:
            return
        self._valid_until = 0.0

        def free(cur: bytes | None) -> bytes | None:
            if cur is None or LeaseRecordDecoder.decode(cur).holder != self.holder:
                return None
            return encode(LeaseRecord(holder=self.holder, expires_at=0.0))

        try:
            await asyncio.wait_for(bus.kv_cas(self.kv, self.key, free), timeout=5.0)
            log.info("lease_released", key=self.key, holder=self.holder)
        except Exception as e:  # it will expire on its own
            log.warning("lease_release_failed", key=self.key, error=repr(e))
