"""The one invariant checker every reliability scenario runs after its workload.

A scenario's workload (:mod:`tests.reliability.workload`) reports every call the
platform accepted, with the value its caller got back, and each value names the call and
the container that produced it. After the workload, and after the scenario's app scaled
to zero, :func:`check` reads what the platform itself recorded (JetStream streams and KV,
Redis) and asserts:

1. every accepted call has exactly one result: exactly one output on the subject of its
   current attempt, and that output is the value the caller got;
2. no acknowledged submission is lost: every call id a caller was given has that output,
   and nothing of the function is left in the inputs stream;
3. charged usage equals the containers' lifetimes from the agent's own start and stop
   events (a lost agent's containers: up to its last heartbeat), each metering record is
   counted once, the ledger billing wrote holds exactly those seconds, and a full replay
   of the metering stream from sequence 1 rebuilds that ledger bit for bit;
4. no GPU was held by two containers at once, and every GPU slot (the agents' claims
   in KV) and every warm-pool entry (Redis) of the app is released once its containers
   stopped;
5. no output from a stale attempt was accepted: the accepted output carries the call's
   current attempt token (from its KV record), and the container that produced the
   caller's value is the one that stored it.

Each violation is listed by name with the offending ids, so a failure says what broke.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
import redis.asyncio as aioredis
from nats.js import JetStreamContext

from burst._parts import read_state
from burst_core import ledger, names
from burst_core.calls import CallBuckets
from burst_core.schemas import (
    AgentLost,
    CallRecordDecoder,
    ContainerEventDecoder,
    ContainerStarted,
    ContainerStopped,
    LedgerSnapshot,
    MeteringRecord,
    Output,
    OutputDecoder,
    decoder,
)

WORKSPACE = "default"
#: How far a container's charged seconds may fall short of its lifetime: its final record
#: ends just before the stopped event is stamped (one publish apart).
LIFETIME_SLACK = 1.0
#: Charged seconds may not exceed the lifetime by more than clock noise.
OVERCHARGE_SLACK = 0.05

_metering = decoder(MeteringRecord | AgentLost)


@dataclasses.dataclass
class Accepted:
    """A call the platform accepted, as its caller saw it."""

    call_id: str
    value: Any  # what the caller got back: [x, call_id, container_id]
    kind: str = "spawn"


@dataclasses.dataclass
class Cluster:
    nats_url: str
    redis_url: str

    @classmethod
    def of(cls, home: Path) -> Cluster:
        state = read_state(home)
        assert state is not None, f"no cluster.json in {home}"
        parts = {p.name: p for p in state.parts}
        return cls(nats_url=f"nats://127.0.0.1:{parts['nats'].ports['client']}",
                   redis_url=f"redis://127.0.0.1:{parts['redis'].ports['client']}/0")


#: Seconds after the settle within which claims and warm-pool entries are gone.
RELEASE_WITHIN = 15.0


class Violations(AssertionError):
    pass


async def _all(js: JetStreamContext, stream: str, subject: str) -> list[Any]:
    """Every message of ``stream`` on ``subject`` now stored, in order."""
    info = await js.stream_info(stream, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
    if not total:
        return []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    out: list[Any] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            out.append(msg)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


@dataclasses.dataclass
class Usage:
    started: dict[str, ContainerStarted] = dataclasses.field(default_factory=dict)
    stopped: dict[str, ContainerStopped] = dataclasses.field(default_factory=dict)
    records: dict[str, dict[int, MeteringRecord]] = dataclasses.field(
        default_factory=lambda: defaultdict(dict))
    lost: list[AgentLost] = dataclasses.field(default_factory=list)
    conflicting: list[str] = dataclasses.field(default_factory=list)
    #: The stream sequence of the app's last record (or agent lost) billing must fold.
    last_seq: int = 0
    #: Every app's containers that held GPUs: (agent, GPU index) -> [(start, stop, id)].
    gpus: dict[tuple[str, int], list[tuple[float, float, str]]] = dataclasses.field(
        default_factory=lambda: defaultdict(list))


async def _usage(js: JetStreamContext, app: str) -> Usage:
    u = Usage()
    gpu_started: dict[str, ContainerStarted] = {}
    gpu_stopped: dict[str, float] = {}
    for msg in await _all(js, names.STREAM_CONTROL, names.SUBJECTS_CONTAINER_EVENTS):
        ev = ContainerEventDecoder.decode(msg.data)
        if isinstance(ev, ContainerStarted) and ev.gpu_indices:
            gpu_started[ev.container_id] = ev
        elif isinstance(ev, ContainerStopped):
            gpu_stopped[ev.container_id] = ev.at
        if isinstance(ev, ContainerStarted) and ev.app == app:
            u.started[ev.container_id] = ev
        elif isinstance(ev, ContainerStopped) and ev.app == app:
            u.stopped[ev.container_id] = ev
    for cid, ev in gpu_started.items():
        for i in ev.gpu_indices:
            u.gpus[(ev.agent_id, i)].append((ev.at, gpu_stopped.get(cid, float("inf")), cid))
    for msg in await _all(js, names.STREAM_METERING, names.SUBJECTS_METERING):
        rec = _metering.decode(msg.data)
        if isinstance(rec, AgentLost) or rec.app == app:
            u.last_seq = msg.metadata.sequence.stream
        if isinstance(rec, AgentLost):
            u.lost.append(rec)
        elif rec.app == app:
            seen = u.records[rec.container_id].get(rec.interval)
            if seen is not None and (seen.start, seen.end) != (rec.start, rec.end):
                u.conflicting.append(f"{rec.container_id}:{rec.interval}")
            u.records[rec.container_id].setdefault(rec.interval, rec)
    return u


def _lost_at(u: Usage, cid: str, agent_id: str, started_at: float) -> AgentLost | None:
    for lost in u.lost:
        if lost.agent_id == agent_id and (
                cid in lost.container_ids or lost.last_heartbeat_at >= started_at):
            return lost
    return None


async def _settled(js: JetStreamContext, app: str, timeout: float) -> Usage:
    """The app's usage once every container it started has stopped (or was lost with its
    agent) and billing folded the whole metering stream."""
    deadline = time.monotonic() + timeout
    while True:
        u = await _usage(js, app)
        running = [c for c, ev in u.started.items() if c not in u.stopped
                   and _lost_at(u, c, ev.agent_id, ev.at) is None]
        snap = await ledger.load_snapshot(js)
        # Other apps' idle containers keep metering: wait for this app's records only.
        if not running and snap.seq >= u.last_seq:
            return u
        if time.monotonic() > deadline:
            raise Violations(
                f"not settled within {timeout} s: containers still running {running}, "
                f"ledger folded through {snap.seq} of {u.last_seq}")
        await asyncio.sleep(0.25)


async def _check(c: Cluster, app: str, functions: list[str], accepted: list[Accepted],
                 timeout: float) -> dict[str, Any]:
    problems: list[str] = []
    nc = await nats.connect(c.nats_url)
    r = aioredis.from_url(c.redis_url)
    try:
        js = nc.jetstream()
        u = await _settled(js, app, timeout)
        fn_keys = [names.function_key(WORKSPACE, app, f) for f in functions]

        # 1, 2, 5: one output per accepted call, on its current attempt, the caller's value.
        outputs: dict[str, list[Output]] = defaultdict(list)
        # (transient calls' outputs and records apart: both streams, both buckets)
        for stream, subjects in ((names.STREAM_OUTPUTS, names.SUBJECTS_OUTPUTS),
                                 (names.STREAM_TRANSIENT_OUTPUTS,
                                  names.SUBJECTS_TRANSIENT_OUTPUTS)):
            for msg in await _all(js, stream, subjects):
                out = OutputDecoder.decode(msg.data)
                outputs[out.call_id].append(out)
        buckets = await CallBuckets.open(js)
        ids = [a.call_id for a in accepted]
        if len(set(ids)) != len(ids):
            problems.append(f"a call id given to two callers: "
                            f"{sorted(i for i in set(ids) if ids.count(i) > 1)}")
        for a in accepted:
            try:
                rec = CallRecordDecoder.decode(
                    (await buckets.of(a.call_id).get(a.call_id)).value or b"")
                attempt, token = rec.attempt, rec.attempt_token
            except Exception:  # a call answered while waited on has no record: attempt 1
                rec, attempt, token = None, 1, ""
            current = [o for o in outputs.get(a.call_id, []) if o.attempt == attempt]
            if not current:
                problems.append(f"lost: call {a.call_id} ({a.kind}) has no output for its "
                                f"attempt {attempt}")
                continue
            if len(current) != 1:
                problems.append(f"call {a.call_id} has {len(current)} outputs for attempt "
                                f"{attempt}")
            out = current[0]
            if token and out.attempt_token != token:
                problems.append(f"stale: call {a.call_id}'s output carries attempt token "
                                f"{out.attempt_token}, its record {token}")
            if isinstance(a.value, list) and a.value[:1] == ["error"]:
                if out.status == "success":
                    problems.append(f"call {a.call_id}: the caller got {a.value[1]}, its "
                                    f"accepted output is a success")
                continue
            if out.status != "success":
                problems.append(f"call {a.call_id}: output {out.status} {out.error_type}")
                continue
            try:
                stored = pickle.loads(out.payload) if out.payload else None
            except Exception as e:
                stored = f"<undecodable: {e!r}>"
            if _plain(stored) != _plain(a.value):
                problems.append(f"call {a.call_id}: the caller got {a.value!r}, the accepted "
                                f"output holds {stored!r}")
            value = _plain(a.value)
            if isinstance(value, list) and len(value) == 3 and value[1] != a.call_id:
                problems.append(f"call {a.call_id}: the caller's value came from call "
                                f"{value[1]}")
            if isinstance(value, list) and len(value) == 3 and out.container_id != value[2]:
                problems.append(f"stale: call {a.call_id}'s value was produced in "
                                f"{value[2]}, its accepted output stored by {out.container_id}")
        for fk in fn_keys:
            info = await js.stream_info(names.STREAM_INPUTS,
                                        subjects_filter=names.input_subject(fk))
            left = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
            if left:
                problems.append(f"{left} inputs of {fk} still in the inputs stream")

        # 3: charged usage equals the containers' lifetimes; nothing charged twice.
        charged_total = 0.0
        lifetimes: dict[str, float] = {}
        for cid in sorted(set(u.started) | set(u.records)):
            recs = u.records.get(cid, {})
            charged = sum(ledger.record_seconds(x) for x in recs.values())
            ev = u.started.get(cid)
            if ev is None:
                problems.append(f"container {cid} was charged but never reported started")
                charged_total += charged
                continue
            stop = u.stopped.get(cid)
            if stop is not None:
                life = stop.at - ev.at
                if not any(x.final for x in recs.values()):
                    problems.append(f"container {cid} stopped without a final metering "
                                    f"record")
            else:
                lost = _lost_at(u, cid, ev.agent_id, ev.at)
                assert lost is not None  # _settled waited for it
                last_end = max((x.end for x in recs.values()), default=ev.at)
                hb = max(last_end, lost.last_heartbeat_at)
                charged += hb - last_end  # the ledger closes it at its last heartbeat
                life = hb - ev.at
            lifetimes[cid] = life
            charged_total += charged
            if not life - LIFETIME_SLACK <= charged <= life + OVERCHARGE_SLACK:
                problems.append(f"container {cid}: charged {charged:.3f} s, lived "
                                f"{life:.3f} s")
            ivs = sorted(recs)
            if ivs and ivs != list(range(len(ivs))):
                problems.append(f"container {cid}: metering intervals {ivs} have gaps")
        if u.conflicting:
            problems.append(f"records with one identity and two spans: {u.conflicting}")
        snap = await ledger.load_snapshot(js)
        replayed = await _replay(js, snap.seq)
        if ledger.fingerprint(replayed) != ledger.fingerprint(snap):
            diff = sorted(k for k in set(snap.lines) | set(replayed.lines)
                          if snap.lines.get(k) != replayed.lines.get(k))
            problems.append(f"the saved ledger (through seq {snap.seq}) differs from a full "
                            f"replay of the metering stream; lines that differ: {diff}")
        booked = sum(snap.lines[k].seconds for k in fn_keys if k in snap.lines)
        if abs(booked - charged_total) > 1e-6 * max(1.0, charged_total):
            problems.append(f"the ledger holds {booked:.6f} s for {app}, its containers' "
                            f"records and lost spans {charged_total:.6f} s")

        # 4: no GPU given to two containers at once (any app's, on the same agent);
        # GPU slots and warm-pool entries released.
        lost_agents = {x.agent_id for x in u.lost}
        for (agent_id, index), spans in sorted(u.gpus.items()):
            if agent_id in lost_agents:
                continue  # its containers have no stop time: closed at its loss
            spans.sort()
            for n, (s2, _, c2) in enumerate(spans):
                for _s1, e1, c1 in spans[:n]:
                    if s2 < e1 and (c1 in u.started or c2 in u.started):
                        problems.append(f"GPU {index} of {agent_id} given twice: {c1} "
                                        f"(until {e1:.3f}) and {c2} (from {s2:.3f})")
        # Released asynchronously (the scheduler syncs pools and claims from the agents'
        # heartbeats): each must be gone within RELEASE_WITHIN seconds of the settle.
        release_by = time.monotonic() + RELEASE_WITHIN
        while True:
            held = await _still_held(js, r, app, fn_keys)
            if not held or time.monotonic() > release_by:
                break
            await asyncio.sleep(0.25)
        problems.extend(held)
    finally:
        await nc.close()
        await r.aclose()
    if problems:
        raise Violations("invariants broken:\n- " + "\n- ".join(problems))
    return {"calls": len(accepted), "containers": len(lifetimes),
            "charged_s": round(charged_total, 3)}


async def _still_held(js: JetStreamContext, r: Any, app: str, fn_keys: list[str]) -> list[str]:
    """What agents' claims and warm pools still hold of ``app``."""
    problems: list[str] = []
    agents_kv = await js.key_value(names.KV_AGENTS)
    try:
        agent_ids = await agents_kv.keys()
    except Exception:
        agent_ids = []
    for agent_id in agent_ids:
        entry = await agents_kv.get(agent_id)
        if not entry.value:
            continue
        from burst_core.schemas import AgentRecordDecoder
        rec_a = AgentRecordDecoder.decode(entry.value)
        held = {cid: a for cid, a in rec_a.allocations.items() if a.fn_key in fn_keys}
        if held:
            problems.append(f"agent {agent_id} still holds claims of {app}: "
                            f"{sorted(held)} (GPUs "
                            f"{sorted(i for a in held.values() for i in a.gpu_indices)})")
    for fk in fn_keys:
        pool = await r.hkeys(names.redis_pool_key(fk))
        if pool:
            problems.append(f"warm pool of {fk} still lists {pool}")
    return problems


async def _replay(js: JetStreamContext, through: int) -> LedgerSnapshot:
    """The ledger folded afresh from sequence 1 of the metering stream through
    ``through``, as billing folds it (default prices)."""
    snap = LedgerSnapshot()
    rates = ledger.Rates()
    for msg in await _all(js, names.STREAM_METERING, names.SUBJECTS_METERING):
        seq = msg.metadata.sequence.stream
        if seq > through:
            break
        try:
            message = ledger.MeteringMessageDecoder.decode(msg.data)
        except Exception:
            ledger.skip(snap, seq)
            continue
        at = ledger.stream_time(msg.metadata.timestamp)
        if isinstance(message, AgentLost):
            ledger.apply_lost(snap, seq, message, rates, at)
        else:
            ledger.apply(snap, seq, message, rates, at)
    return snap


def _plain(v: Any) -> Any:
    """Tuples as lists, so a value compares equal however it travelled."""
    return json.loads(json.dumps(v, default=str))


def check(home: Path, app: str, functions: list[str], accepted: list[Accepted],
          timeout: float = 60.0) -> dict[str, Any]:
    """Assert every invariant for ``app``'s ``functions`` after a workload whose accepted
    calls are ``accepted``; returns a summary (calls, containers, charged seconds)."""
    return asyncio.run(_check(Cluster.of(home), app, functions, accepted, timeout))
