"""The usage ledger: a fold of the metering stream, shared by billing and the gateway.

Billing alone writes it, folding every ``MeteringRecord`` of ``BURST_METERING`` in stream
order (:func:`apply`) into a :class:`LedgerSnapshot` saved in KV; the gateway reads the
snapshot (:func:`load_snapshot`) and answers reports (:func:`report`).

Invariants:
- a record (``(container_id, interval)``) counts at most once however often it arrives;
  the memory for that stays bounded (a contiguous run of intervals is one mark, a closed
  container one number);
- the same messages in the same order give the same snapshot, bit for bit, so a replay
  from sequence 1 rebuilds an identical ledger;
- costs accumulate as unrounded floats; rounding is for display only.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext

from burst_core import ledger_store, names
from burst_core.schemas import (
    AgentLost,
    ContainerMark,
    LedgerLine,
    LedgerSnapshot,
    MeteringRecord,
    decoder,
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

ReportBy = Literal["app", "function", "resource", "day"]
REPORT_BY = ("app", "function", "resource", "day")

#: How long after a container's last record (stream time) its dedupe marks are kept; a
#: record that ended longer ago than this before the stream time it arrives at is refused
#: as late (and counted in ``late_records``), since its container's marks may be gone. An
#: agent never holds a record back that long: a failed publish merges into its next record.
DEDUPE_HORIZON = 24 * 3600.0

#: What the metering stream carries: usage records, and agents lost (billing republishes
#: the scheduler's ``AgentLost`` there, so a replay closes the same containers the same way).
MeteringMessageDecoder = decoder(MeteringRecord | AgentLost)


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
_DAY_NAMES: dict[int, str] = {}


def stream_time(stored: Any) -> float:
    """The fold's clock reading for a message stored at datetime ``stored``: whole seconds,
    so the same message gives the same reading however its time was read back."""
    return float(int(stored.timestamp()))


def day_of(t: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of epoch time ``t``."""
    n = int(t // 86400)
    name = _DAY_NAMES.get(n)
    if name is None:
        name = time.strftime("%Y-%m-%d", time.gmtime(n * 86400))
        if len(_DAY_NAMES) < 100_000:
            _DAY_NAMES[n] = name
    return name


def gpu_name(gpu_type: str | None) -> str:
    """The canonical spelling of a GPU type (upper case, aliases resolved)."""
    key = (gpu_type or "").strip().upper()
    return _GPU_ALIASES.get(key, key)


def _line(lines: dict[str, LedgerLine], key: str, r: MeteringRecord, day: str = "") -> LedgerLine:
    line = lines.get(key)
    if line is None:
        line = lines[key] = LedgerLine(workspace=r.workspace, app=r.app, function=r.function,
                                       day=day)
    return line


def _add(line: LedgerLine, r: MeteringRecord, seconds: float,
         parts: tuple[float, float, float], records: int = 1) -> None:
    cpu, mem, gpu = parts
    res = r.resources
    line.seconds += seconds
    line.cost += cpu + mem + gpu
    line.records += records
    if r.app_id:  # a container of an ephemeral run (`burst run`) of this app
        line.ephemeral_seconds += seconds
        line.ephemeral_cost += cpu + mem + gpu
    line.cpu_core_seconds += seconds * res.cpu
    line.cpu_cost += cpu
    line.memory_gib_seconds += seconds * (res.memory_mb / 1024)
    line.memory_cost += mem
    if res.gpu_count > 0:
        g = gpu_name(res.gpu_type)
        line.gpu_seconds[g] = line.gpu_seconds.get(g, 0.0) + seconds * res.gpu_count
        line.gpu_cost[g] = line.gpu_cost.get(g, 0.0) + gpu


def _book(snapshot: LedgerSnapshot, r: MeteringRecord, rates: Rates,
          records: int = 1) -> tuple[LedgerLine, LedgerLine]:
    """Add ``r`` to its function's total line and its day line; returns both."""
    key = names.function_key(r.workspace, r.app, r.function)
    seconds = record_seconds(r)
    parts = cost_parts(r, rates)
    day = day_of(r.start)
    total = _line(snapshot.lines, key, r)
    daily = _line(snapshot.days, f"{day}.{key}", r, day)
    _add(total, r, seconds, parts, records)
    _add(daily, r, seconds, parts, records)
    return total, daily


def _tick(snapshot: LedgerSnapshot, at: float, horizon: float) -> None:
    """Advance the fold's clock to stream time ``at``; prune marks a horizon old.

    Pruning depends on stream times only, so a replay prunes at the same points.
    """
    if at <= snapshot.clock:
        return
    snapshot.clock = at
    if at - snapshot.pruned_at < horizon / 10:
        return
    snapshot.pruned_at = at
    cutoff = at - horizon
    for cid in snapshot.closed:
        if cid not in snapshot.closed_at:  # written before closed_at existed
            snapshot.closed_at[cid] = at
    for cid in [c for c, t in snapshot.closed_at.items() if t < cutoff]:
        del snapshot.closed_at[cid]
        snapshot.closed.pop(cid, None)
    for cid in [c for c, m in snapshot.open.items() if m.seen_at < cutoff]:
        # No record for a horizon and never closed: its redeliveries would be late anyway.
        del snapshot.open[cid]
        snapshot.seen.pop(cid, None)
        snapshot.seen_through.pop(cid, None)
        snapshot.final_interval.pop(cid, None)
    for key in [k for k, t in snapshot.lost_agents.items() if t < cutoff]:
        del snapshot.lost_agents[key]


def apply(snapshot: LedgerSnapshot, seq: int, record: MeteringRecord, rates: Rates,
          at: float = 0.0, horizon: float = DEDUPE_HORIZON) -> bool:
    """Fold the record stored at stream sequence ``seq`` (stream time ``at``) into ``snapshot``.

    Returns True when the record was counted, False when it was already counted (or is
    not countable, or late). A ``seq`` at or below ``snapshot.seq`` was folded before:
    ignored. Without ``at`` (0) the fold has no clock: nothing is pruned or late.
    """
    if seq <= snapshot.seq:
        return False
    snapshot.seq = seq
    _tick(snapshot, at, horizon)
    cid = record.container_id
    if record.interval < 0 or is_counted(snapshot, cid, record.interval):
        return False
    if snapshot.clock and record.end < snapshot.clock - horizon:
        snapshot.late_records += 1
        snapshot.late_seconds += record_seconds(record)
        return False
    _book(snapshot, record, rates)
    _mark_counted(snapshot, record)
    if cid in snapshot.closed:
        snapshot.open.pop(cid, None)
        snapshot.closed_at[cid] = snapshot.clock
    else:
        mark = snapshot.open.get(cid)
        if mark is None:
            snapshot.open[cid] = ContainerMark(
                workspace=record.workspace, app=record.app, function=record.function,
                agent_id=record.agent_id, resources=record.resources, spot=record.spot,
                end=record.end, seen_at=snapshot.clock)
        else:
            mark.end = max(mark.end, record.end)
            mark.seen_at = snapshot.clock
    return True


def apply_lost(snapshot: LedgerSnapshot, seq: int, lost: AgentLost, rates: Rates,
               at: float = 0.0, horizon: float = DEDUPE_HORIZON) -> int:
    """Close the open containers of a lost agent at its last heartbeat. Returns how many.

    Each is billed from its last record's end up to ``last_heartbeat_at`` (it held its
    resources until then, as far as anyone knows); the span from there to ``lost_at`` is
    recorded per function as unaccounted, not billed. Records of a closed container that
    arrive later (the agent was only cut off) are not counted.
    """
    if seq <= snapshot.seq:
        return 0
    snapshot.seq = seq
    _tick(snapshot, at, horizon)
    key = f"{lost.agent_id}:{lost.last_heartbeat_at!r}"
    if key in snapshot.lost_agents:
        return 0
    snapshot.lost_agents[key] = snapshot.clock
    cids = set(lost.container_ids)
    cids.update(c for c, m in snapshot.open.items()
                if m.agent_id == lost.agent_id and m.end <= lost.lost_at)
    closed = 0
    for cid in sorted(cids):
        m = snapshot.open.pop(cid, None)
        if m is None:  # never metered, or closed by its final record
            continue
        hb = max(m.end, lost.last_heartbeat_at)
        span = MeteringRecord(
            container_id=cid, interval=-1, start=m.end, end=hb, workspace=m.workspace,
            app=m.app, function=m.function, agent_id=m.agent_id, resources=m.resources,
            spot=m.spot)
        unaccounted = max(0.0, lost.lost_at - hb)
        for line in _book(snapshot, span, rates, records=0):
            line.lost_billed_seconds += hb - m.end
            line.lost_unaccounted_seconds += unaccounted
            line.lost_containers += 1
        snapshot.closed[cid] = snapshot.seen_through.get(cid, -1)
        snapshot.closed_at[cid] = snapshot.clock
        snapshot.seen.pop(cid, None)
        snapshot.seen_through.pop(cid, None)
        snapshot.final_interval.pop(cid, None)
        closed += 1
    return closed


def skip(snapshot: LedgerSnapshot, seq: int) -> None:
    """Move past a message that is not a record (malformed): the fold never retries it."""
    snapshot.seq = max(snapshot.seq, seq)


_sorted_encoder = msgspec.msgpack.Encoder(order="sorted")


def fingerprint(snapshot: LedgerSnapshot) -> bytes:
    """Everything the fold determines, not when it was saved: equal iff the same ledger
    (maps compared as maps: a ledger read back from its pieces lists its days by month)."""
    return _sorted_encoder.encode(msgspec.structs.replace(snapshot, updated_at=0.0))


# ---- reading ---------------------------------------------------------------------------
def _source(snapshot: LedgerSnapshot, workspace: str, since: str | None,
            daily: bool) -> list[LedgerLine]:
    """The lines of one workspace in a fixed order: per day (from ``since``) or totals."""
    if since or daily:
        lines = snapshot.days
        keys = sorted(k for k in lines if since is None or k[:10] >= since)
    else:
        lines = snapshot.lines
        keys = sorted(lines)
    return [lines[k] for k in keys if lines[k].workspace == workspace]


def check_since(since: str | None) -> str | None:
    """``since`` if it is a ``YYYY-MM-DD`` date (or None), else ValueError naming it."""
    if since is None or since == "":
        return None
    try:
        parsed = time.strptime(since, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"since={since!r}: use a date as YYYY-MM-DD") from None
    return time.strftime("%Y-%m-%d", parsed)


def report(snapshot: LedgerSnapshot, workspace: str, by: ReportBy = "app",
           since: str | None = None) -> list[dict[str, Any]]:
    """Usage of one workspace, one row per app, function, resource or UTC day, sorted.

    Rows by app/function/day: ``app`` (``function``; ``day``), ``seconds`` (container
    seconds), ``cost`` (USD, unrounded) and ``records``. Rows by resource: ``resource``
    (``cpu``, ``memory``, ``gpu:<TYPE>``), ``quantity`` and ``unit`` (core-seconds,
    GiB-seconds, GPU-seconds) and ``cost``. ``since`` (``YYYY-MM-DD``, UTC) keeps the
    records that started on or after that day. Other workspaces' lines are never included.
    """
    if by not in REPORT_BY:
        raise ValueError(f"report by={by!r}: use one of {', '.join(REPORT_BY)}")
    since = check_since(since)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}

    def row(group: tuple[str, ...], init: dict[str, Any]) -> dict[str, Any]:
        r = rows.get(group)
        if r is None:
            r = rows[group] = init
        return r

    # Sorted keys: the same ledger always sums in the same order, to the same floats.
    for line in _source(snapshot, workspace, since, daily=by == "day"):
        if by == "resource":
            parts = [("cpu", "core-seconds", line.cpu_core_seconds, line.cpu_cost),
                     ("memory", "GiB-seconds", line.memory_gib_seconds, line.memory_cost)]
            parts += [(f"gpu:{g}", "GPU-seconds", q, line.gpu_cost.get(g, 0.0))
                      for g, q in sorted(line.gpu_seconds.items())]
            for name, unit, qty, cost in parts:
                r = row((name,), {"resource": name, "unit": unit, "quantity": 0.0, "cost": 0.0})
                r["quantity"] += qty
                r["cost"] += cost
            continue
        if by == "app":
            group: tuple[str, ...] = (line.app,)
            init: dict[str, Any] = {"app": line.app}
        elif by == "function":
            group, init = (line.app, line.function), {"app": line.app, "function": line.function}
        else:
            group, init = (line.day,), {"day": line.day}
        r = row(group, {**init, "seconds": 0.0, "cost": 0.0, "records": 0,
                        "ephemeral_seconds": 0.0, "ephemeral_cost": 0.0})
        r["seconds"] += line.seconds
        r["cost"] += line.cost
        r["records"] += line.records
        r["ephemeral_seconds"] += line.ephemeral_seconds
        r["ephemeral_cost"] += line.ephemeral_cost
    return [rows[g] for g in sorted(rows)]


def workspace_total(snapshot: LedgerSnapshot, workspace: str,
                    since: str | None = None) -> dict[str, Any]:
    """One workspace's totals: ``seconds``, ``cost`` (USD, unrounded), ``records``, and the
    spans of lost agents (``lost_billed_seconds``, ``lost_unaccounted_seconds``)."""
    total: dict[str, Any] = {"seconds": 0.0, "cost": 0.0, "records": 0,
                             "lost_billed_seconds": 0.0, "lost_unaccounted_seconds": 0.0}
    for line in _source(snapshot, workspace, check_since(since), daily=False):
        total["seconds"] += line.seconds
        total["cost"] += line.cost
        total["records"] += line.records
        total["lost_billed_seconds"] += line.lost_billed_seconds
        total["lost_unaccounted_seconds"] += line.lost_unaccounted_seconds
    return total


def spend(snapshot: LedgerSnapshot, workspace: str, app: str | None, function: str | None,
          first_day: str, last_day: str) -> float:
    """USD spent by a scope (the workspace, one app, one function) over UTC days
    ``first_day..last_day`` (inclusive, ``YYYY-MM-DD``)."""
    total = 0.0
    for key in sorted(snapshot.days):
        day = key[:10]
        if day < first_day or day > last_day:
            continue
        line = snapshot.days[key]
        if line.workspace != workspace or (app is not None and line.app != app):
            continue
        if function is not None and line.function != function:
            continue
        total += line.cost
    return total


async def load_snapshot(js: JetStreamContext) -> LedgerSnapshot:
    """The latest ledger billing saved (its header and pieces, see
    :mod:`burst_core.ledger_store`), or an empty one before billing's first save."""
    snap, _, _ = await ledger_store.read(await js.key_value(names.KV_LEDGER))
    return snap
