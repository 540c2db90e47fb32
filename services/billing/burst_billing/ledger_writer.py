"""Fold the metering stream into the ledger snapshot, and save it.

The snapshot holds its own stream position (``seq``): on start the writer loads it and
reads ``BURST_METERING`` from ``seq + 1`` with an ordered consumer (ephemeral, no acks,
in stream order, recreated by the client at the right sequence after a gap), so nothing
is acked, nothing is skipped and nothing is folded twice.

Saves go through :class:`burst_core.ledger_store.LedgerStore` (a header naming pieces, so
the ledger may outgrow one KV value) and are fenced by compare-and-set on the header's
revision: a writer that was superseded (its lease ran out while it was cut off, and a
successor saved since) fails its next save with :class:`Superseded` and stops, instead of
overwriting a newer ledger. Whichever writer saves, every saved snapshot is the exact fold
of the stream up to its ``seq``.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from burst_core import ledger, logs, names
from burst_core.ledger_store import LedgerStore, Superseded
from burst_core.schemas import AgentLost, LedgerSnapshot

log = logs.get("burst.billing.ledger")

__all__ = ["LedgerWriter", "Superseded"]


class LedgerWriter:
    """One writer's run: load the snapshot, fold new records, save periodically."""

    def __init__(
        self, js: JetStreamContext, rates: ledger.Rates, snapshot_interval: float,
        horizon: float = ledger.DEDUPE_HORIZON,
    ) -> None:
        self.js = js
        self.rates = rates
        self.snapshot_interval = snapshot_interval
        self.horizon = horizon
        self.snapshot = LedgerSnapshot()
        self._store: LedgerStore | None = None
        self._saved_seq = -1
        #: Set once the saved snapshot is loaded: before that ``snapshot`` is empty.
        self.loaded = False

    @property
    def seq(self) -> int:
        seq: int = self.snapshot.seq
        return seq

    async def run(self, until: asyncio.Event) -> None:
        """Fold until ``until`` is set, then save. Raises :class:`Superseded`."""
        self._store = LedgerStore(await self.js.key_value(names.KV_LEDGER))
        self.snapshot = await self._store.load()
        self._saved_seq = self.snapshot.seq
        self.loaded = True
        log.info("ledger_loaded", seq=self.snapshot.seq, lines=len(self.snapshot.lines))
        sub = await self.js.subscribe(
            names.SUBJECTS_METERING,
            stream=names.STREAM_METERING,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.snapshot.seq + 1,
            ),
        )
        loop = asyncio.get_running_loop()
        next_save = loop.time() + self.snapshot_interval
        try:
            while not until.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.2)
                except nats.errors.TimeoutError:
                    pass
                else:
                    self.fold(msg)
                if loop.time() >= next_save:
                    await self.save()
                    next_save = loop.time() + self.snapshot_interval
        finally:
            try:
                await sub.unsubscribe()
            except Exception as e:  # the ephemeral consumer goes away on its own
                log.warning("unsubscribe_failed", error=repr(e))
        await self.save()

    def fold(self, msg: Msg) -> None:
        """Fold one stream message (a record, or something to step over)."""
        seq = msg.metadata.sequence.stream
        snap = self.snapshot
        if snap.seq and seq > snap.seq + 1:
            # Only expiry (max_age) or an operator's purge removes metering messages.
            log.warning("metering_gap", after=snap.seq, next=seq)
        try:
            message = ledger.MeteringMessageDecoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("metering_record_malformed", seq=seq, subject=msg.subject, error=str(e))
            ledger.skip(snap, seq)
            return
        at = ledger.stream_time(msg.metadata.timestamp)
        if isinstance(message, AgentLost):
            n = ledger.apply_lost(snap, seq, message, self.rates, at, self.horizon)
            log.info("agent_lost_folded", agent_id=message.agent_id, containers_closed=n)
            return
        ledger.apply(snap, seq, message, self.rates, at, self.horizon)

    async def save(self) -> None:
        """Save the snapshot if it moved since the last save (compare-and-set)."""
        if self._store is None or self.snapshot.seq == self._saved_seq:
            return
        self.snapshot.updated_at = time.time()
        size = await self._store.save(self.snapshot)  # raises Superseded
        self._saved_seq = self.snapshot.seq
        log.debug("ledger_saved", seq=self.snapshot.seq, bytes=size,
                  pieces_written=self._store.last_written)
