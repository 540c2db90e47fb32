"""The saved ledger in KV: a header and the pieces it names, so it may outgrow a KV value.

The snapshot is saved as groups (the snapshot without day lines, then one per month of day
lines), each cut into pieces of at most ``chunk_bytes`` under their own keys; the header
(key ``state``) holds the stream position and each group's pieces with their sha256.

Invariants: one writer at a time, fenced by compare-and-set on the header; a save reuses
pieces the header already holds with the same bytes and writes the others only to slots of
its own that the current header does not name, so nothing a reader reads through the
current header is ever overwritten; a writer deletes other writers' pieces only once its
own header no longer names them. A reader that finds a piece missing or changed starts
again from the header. A ``state`` value that is a whole snapshot (the old format) is read
and replaced at the next save.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from burst_core import bus, logs, names
from burst_core.schemas import (
    LedgerHeader,
    LedgerLine,
    LedgerPart,
    LedgerSnapshot,
    LedgerSnapshotDecoder,
    LedgerStateDecoder,
)

log = logs.get("burst.ledger")

#: Largest piece: well below the server's default max payload (1 MiB).
CHUNK_BYTES = 512 * 1024
#: Reads that found a piece replaced under them before a reader gives up.
READ_ATTEMPTS = 10

_encoder = msgspec.msgpack.Encoder()
_DaysDecoder = msgspec.msgpack.Decoder(dict[str, LedgerLine])


class Superseded(Exception):
    """Another writer saved the ledger since this one loaded it."""


class TornRead(Exception):
    """The ledger kept changing under a reader."""


def groups_of(snap: LedgerSnapshot) -> list[bytes]:
    """The snapshot as bytes: without its day lines, then one group per month of them."""
    months: dict[str, dict[str, LedgerLine]] = {}
    for key, line in snap.days.items():
        months.setdefault(key[:7], {})[key] = line
    out = [_encoder.encode(msgspec.structs.replace(snap, days={}))]
    out += [_encoder.encode(months[m]) for m in sorted(months)]
    return out


def from_groups(groups: list[bytes]) -> LedgerSnapshot:
    snap: LedgerSnapshot = LedgerSnapshotDecoder.decode(groups[0])
    for g in groups[1:]:
        snap.days.update(_DaysDecoder.decode(g))
    return snap


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read(kv: KeyValue) -> tuple[LedgerSnapshot, LedgerHeader | None, int]:
    """``(snapshot, header, header revision)``; an empty snapshot before the first save."""
    for _ in range(READ_ATTEMPTS):
        raw, rev = await bus.kv_get(kv, names.LEDGER_STATE_KEY)
        if raw is None:
            return LedgerSnapshot(), None, 0
        state = LedgerStateDecoder.decode(raw)
        if isinstance(state, LedgerSnapshot):
            return state, None, rev
        try:
            return await _assemble(kv, state), state, rev
        except TornRead:
            continue
    raise TornRead(f"the ledger changed under {READ_ATTEMPTS} reads in a row")


async def _assemble(kv: KeyValue, header: LedgerHeader) -> LedgerSnapshot:
    groups = []
    for parts in header.groups:
        buf = bytearray()
        for p in parts:
            data, _ = await bus.kv_get(kv, p.key)
            if data is None or _digest(data) != p.digest:
                raise TornRead(p.key)
            buf += data
        groups.append(bytes(buf))
    snap = from_groups(groups)
    snap.seq, snap.updated_at = header.seq, header.updated_at
    return snap


class LedgerStore:
    """One writer's handle on the saved ledger: :meth:`load` once, then :meth:`save`."""

    def __init__(self, kv: KeyValue, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.kv = kv
        self.chunk_bytes = chunk_bytes
        #: This writer's slots: a successor's never collide with them.
        self.writer = secrets.token_hex(4)
        self.rev = 0
        self._named: dict[str, str] = {}  # key -> digest, of the current header
        #: Pieces written by the last save (the rest were reused).
        self.last_written = 0

    async def load(self) -> LedgerSnapshot:
        snap, header, self.rev = await read(self.kv)
        self._named = ({p.key: p.digest for g in header.groups for p in g}
                       if header is not None else {})
        return snap

    async def save(self, snap: LedgerSnapshot) -> int:
        """Save ``snap``; returns the bytes it holds. Raises :class:`Superseded`."""
        by_digest = {d: k for k, d in self._named.items()}
        groups: list[list[LedgerPart]] = []
        written, total, slot = 0, 0, 0
        for data in groups_of(snap):
            total += len(data)
            parts = []
            for i in range(0, max(1, len(data)), self.chunk_bytes):
                piece = data[i:i + self.chunk_bytes]
                d = _digest(piece)
                key = by_digest.get(d, "")
                if not key:
                    while (key := names.ledger_part_key(self.writer, slot)) in self._named:
                        slot += 1
                    slot += 1
                    await self.kv.put(key, piece)
                    written += 1
                parts.append(LedgerPart(key=key, digest=d))
            groups.append(parts)
        header = LedgerHeader(seq=snap.seq, updated_at=snap.updated_at or time.time(),
                              groups=groups)
        data = _encoder.encode(header)
        try:
            if self.rev:
                self.rev = await self.kv.update(names.LEDGER_STATE_KEY, data, last=self.rev)
            else:
                self.rev = await self.kv.create(names.LEDGER_STATE_KEY, data)
        except nats.js.errors.KeyWrongLastSequenceError as e:
            raise Superseded(f"ledger saved by another writer since revision {self.rev}") from e
        self._named = {p.key: p.digest for g in groups for p in g}
        self.last_written = written
        mine = f"part.{self.writer}."
        # Also what predecessors wrote and never named (a save that lost the race, a crash
        # before its header): listing the keys is cheap, they are a few per MiB of ledger.
        keys = await bus.kv_keys(self.kv, "part")
        stale = {k for k in keys if not k.startswith(mine) and k not in self._named}
        for key in sorted(stale):  # a predecessor's piece, no longer named
            try:
                if (await bus.kv_get(self.kv, key))[0] is None:
                    continue  # deleted already (its tombstone keeps it listed)
                await self.kv.delete(key)
            except Exception as e:  # left behind: harmless, a reader never names it
                log.warning("ledger_piece_delete_failed", key=key, error=repr(e))
        return total
