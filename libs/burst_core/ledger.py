"""The usage ledger: a fold of the metering stream, shared by billing and the gateway.

Billing is the only writer: it folds every ``MeteringRecord`` of ``BURST_METERING`` in
stream order with :func:`apply` and saves the :class:`LedgerSnapshot` to KV. The gateway
reads that snapshot (:func:`load_snapshot`) and answers reports with :func:`report`.

Invariants:
- a record is identified by ``(container_id, interval)`` and counted at most once, however
  often it is delivered (redelivery, an agent republishing after a restart beyond
  JetStream's dedupe window);
- folding the same messages in the same order gives the same snapshot, bit for bit, so a
  replay from sequence 1 into an empty snapshot rebuilds an identical ledger;
- costs accumulate as floats, unrounded: rounding is for display only. A sum of n floats
  is off by at most about n * 1e-16 of the total, far below a cent for any real ledger.

Dedupe memory stays bounded: per container, the contiguous run of counted intervals
0..w is kept as one mark (``seen_through``), with only out-of-order intervals above it
listed in ``seen``; once a container's final record n has arrived and 0..n are all
counted, the container is reduced to ``closed[container] = n``, and nothing of it is
counted again (a stopped container produces no usage after its final record).

Example::

    snap = LedgerSnapshot()
    apply(snap, seq=1, record=rec, rates=Rates())
    report(snap, "acme", by="function")
    # [{"app": "shop", "function": "resize", "seconds": 5.0, "cost": 8.1e-06, "records": 1}]
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext

from burst_core import bus, names
from burst_core.schemas import (
    LedgerLine,
    LedgerSnapshot,
    LedgerSnapshotDecoder,
    MeteringRecord,
    encode,
)

# The seed's per-second rates (USD). T4/L4 sit below the A10G, L40S between A10G and
# A100-40GB, A100-80GB between A100-40GB and H100, H200 between H100 and B200, in
# proportion to their usual on-demand prices.
DEFAULT_CPU_CORE_SECOND = 0.000013
DEFAULT_GPU_SECOND: dict[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.00032,
    "L40S": 0.000542,
    "A100-40GB": 0.00068,
    "A100-80GB": 0.000833,
    "H100": 0.00120,
    "H200": 0.00138,
    "B200": 0.00178,
}
DEFAULT_SPOT_FACTOR = 0.5
# The seed prices CPU only (its CPU rate covers the memory that comes with it): memory is
# free unless the operator's price table sets ``memory_gib_second``.
DEFAULT_MEMORY_GIB_SECOND = 0.0
# Names users write for the same hardware.
_GPU_ALIASES = {"A100": "A100-40GB", "H100-80GB": "H100", "A10": "A10G"}

ReportBy = Literal["app", "function"]


@dataclasses.dataclass
class Rates:
    """Prices per second of one resource unit; see ``burst_billing.prices`` for the table.

    A GPU type missing from ``gpu_second`` is billed at the highest rate in the table:
    unknown hardware is never free, so a budget still trips.
    """

    #: USD per CPU core-second (fractional cores are billed fractionally).
    cpu_core_second: float = DEFAULT_CPU_CORE_SECOND
    #: USD per GPU-second, by GPU type (upper case, e.g. "A100-80GB").
    gpu_second: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_GPU_SECOND)
    )
    #: USD per GiB-second of memory held (1 GiB = 1024 MiB).
    memory_gib_second: float = DEFAULT_MEMORY_GIB_SECOND
    #: Multiplier on the GPU part of a spot container's cost (the seed: about half).
    spot_factor: float = DEFAULT_SPOT_FACTOR

    def __post_init__(self) -> None:
        if not self.cpu_core_second >= 0:
            raise ValueError(f"cpu_core_second={self.cpu_core_second!r}: must be >= 0")
        if not self.memory_gib_second >= 0:
            raise ValueError(f"memory_gib_second={self.memory_gib_second!r}: must be >= 0")
        if not 0 <= self.spot_factor <= 1:
            raise ValueError(f"spot_factor={self.spot_factor!r}: must be between 0 and 1")
        if not self.gpu_second:
            raise ValueError("gpu_second: needs at least one GPU type")
        for gpu, rate in self.gpu_second.items():
            if not rate >= 0:
                raise ValueError(f"gpu_second[{gpu!r}]={rate!r}: must be >= 0")
        self.gpu_second = {k.strip().upper(): v for k, v in self.gpu_second.items()}

    def gpu_rate(self, gpu_type: str | None) -> float:
        """USD per second of one GPU of ``gpu_type``."""
        key = (gpu_type or "").strip().upper()
        key = _GPU_ALIASES.get(key, key)
        rate = self.gpu_second.get(key)
        return rate if rate is not None else max(self.gpu_second.values())


def record_seconds(record: MeteringRecord) -> float:
    """Wall-clock seconds a record covers (a clock step backwards counts as zero)."""
    return max(0.0, record.end - record.start)


def cost_parts(record: MeteringRecord, rates: Rates) -> tuple[float, float, float]:
    """USD for one record as (cpu, memory, gpu); the spot discount applies to the GPU part
    (the seed: "Spot GPU: ~50% of above rates")."""
    seconds = record_seconds(record)
    res = record.resources
    cpu = seconds * res.cpu * rates.cpu_core_second
    mem = seconds * (res.memory_mb / 1024) * rates.memory_gib_second
    gpu = 0.0
    if res.gpu_count > 0:
        gpu = seconds * res.gpu_count * rates.gpu_rate(res.gpu_type)
        if record.spot:
            gpu *= rates.spot_factor
    return cpu, mem, gpu


def record_cost(record: MeteringRecord, rates: Rates) -> float:
    """USD for one record: CPU core-seconds, memory GiB-seconds and GPU-seconds."""
    cpu, mem, gpu = cost_parts(record, rates)
    return cpu + mem + gpu


# ---- dedupe ----------------------------------------------------------------------------
def is_counted(snapshot: LedgerSnapshot, container_id: str, interval: int) -> bool:
    """Whether the fold already counted (or will never count) this record."""
    if container_id in snapshot.closed:
        return True
    if interval <= snapshot.seen_through.get(container_id, -1):
        return True
    final = snapshot.final_interval.get(container_id)
    if final is not None and interval > final:
        return True  # nothing after the final record
    listed = snapshot.seen.get(container_id)
    if listed:
        i = bisect.bisect_left(listed, interval)
        return i < len(listed) and listed[i] == interval
    return False


def _mark_counted(snapshot: LedgerSnapshot, record: MeteringRecord) -> None:
    cid = record.container_id
    listed = snapshot.seen.setdefault(cid, [])
    bisect.insort(listed, record.interval)
    if record.final:
        snapshot.final_interval[cid] = record.interval
    _compact(snapshot, cid)


def _compact(snapshot: LedgerSnapshot, cid: str) -> None:
    """Fold the contiguous run of counted intervals into marks; close finished containers."""
    mark = snapshot.seen_through.get(cid, -1)
    listed = snapshot.seen.get(cid, [])
    # An older snapshot may list intervals at or below the mark: drop them.
    i = bisect.bisect_right(listed, mark)
    while i < len(listed) and listed[i] == mark + 1:
        mark += 1
        i += 1
    rest = listed[i:]
    if rest:
        snapshot.seen[cid] = rest
    else:
        snapshot.seen.pop(cid, None)
    if mark >= 0:
        snapshot.seen_through[cid] = mark
    final = snapshot.final_interval.get(cid)
    if final is not None and mark >= final:
        snapshot.closed[cid] = final
        snapshot.seen.pop(cid, None)
        snapshot.seen_through.pop(cid, None)
        snapshot.final_interval.pop(cid, None)


# ---- folding ---------------------------------------------------------------------------
def apply(snapshot: LedgerSnapshot, seq: int, record: MeteringRecord, rates: Rates) -> bool:
    """Fold the record stored at stream sequence ``seq`` into ``snapshot``.

    Returns True when the record was counted, False when it was already counted (or is
    not countable). A ``seq`` at or below ``snapshot.seq`` was folded before: ignored.
    """
    if seq <= snapshot.seq:
        return False
    snapshot.seq = seq
    if record.interval < 0 or is_counted(snapshot, record.container_id, record.interval):
        return False
    key = names.function_key(record.workspace, record.app, record.function)
    line = snapshot.lines.get(key)
    if line is None:
        line = snapshot.lines[key] = LedgerLine(
            workspace=record.workspace, app=record.app, function=record.function
        )
    line.seconds += record_seconds(record)
    line.cost += record_cost(record, rates)
    line.records += 1
    _mark_counted(snapshot, record)
    return True


def skip(snapshot: LedgerSnapshot, seq: int) -> None:
    """Move past a message that is not a record (malformed): the fold never retries it."""
    snapshot.seq = max(snapshot.seq, seq)


def fingerprint(snapshot: LedgerSnapshot) -> bytes:
    """Everything the fold determines, not when it was saved: equal iff the same ledger."""
    return encode(msgspec.structs.replace(snapshot, updated_at=0.0))


# ---- reading ---------------------------------------------------------------------------
def report(snapshot: LedgerSnapshot, workspace: str, by: ReportBy = "app") -> list[dict[str, Any]]:
    """Usage of one workspace, one row per app (or per function), sorted by name.

    Rows: ``app`` (and ``function`` when ``by="function"``), ``seconds``, ``cost`` (USD,
    unrounded) and ``records``. Other workspaces' lines are never included.
    """
    if by not in ("app", "function"):
        raise ValueError(f"report by={by!r}: use 'app' or 'function'")
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    # Sorted keys: the same ledger always sums in the same order, to the same floats.
    for key in sorted(snapshot.lines):
        line = snapshot.lines[key]
        if line.workspace != workspace:
            continue
        group = (line.app,) if by == "app" else (line.app, line.function)
        row = rows.get(group)
        if row is None:
            row = rows[group] = {"app": line.app}
            if by == "function":
                row["function"] = line.function
            row.update(seconds=0.0, cost=0.0, records=0)
        row["seconds"] += line.seconds
        row["cost"] += line.cost
        row["records"] += line.records
    return [rows[g] for g in sorted(rows)]


def workspace_total(snapshot: LedgerSnapshot, workspace: str) -> dict[str, Any]:
    """One workspace's totals: ``seconds``, ``cost`` (USD, unrounded), ``records``."""
    total: dict[str, Any] = {"seconds": 0.0, "cost": 0.0, "records": 0}
    for row in report(snapshot, workspace, by="function"):
        total["seconds"] += row["seconds"]
        total["cost"] += row["cost"]
        total["records"] += row["records"]
    return total


def decode_snapshot(data: bytes | None) -> LedgerSnapshot:
    """The snapshot stored in KV, or an empty one when there is none yet."""
    if not data:
        return LedgerSnapshot()
    snap: LedgerSnapshot = LedgerSnapshotDecoder.decode(data)
    return snap


async def load_snapshot(js: JetStreamContext) -> LedgerSnapshot:
    """The latest ledger billing saved, or an empty one before billing's first save."""
    kv = await js.key_value(names.KV_LEDGER)
    data, _ = await bus.kv_get(kv, names.LEDGER_STATE_KEY)
    return decode_snapshot(data)
