"""Lost agents: found by their heartbeat, released by compare-and-set, announced.

An agent whose last heartbeat is older than ``heartbeat_timeout`` is re-read from KV (a
lagging watch must not condemn a live agent; after our own reconnect every agent gets the
timeout counted from then), then marked lost by compare-and-set on its record (same
incarnation, nobody first: of two racing schedulers exactly one wins), which releases its
allocations. :class:`AgentLost` tells billing to close its containers at the last
heartbeat; the inputs its containers ran are handed back at once (a nak on the ack
subjects its heartbeats carried; a new attempt, an internal retry), and replacement
containers are placed for them. A lost agent that comes back finds ``lost_at``, stops what
it runs and registers afresh. Draining (preempted) agents' containers stop counting as
active, so the reconcile pass places new ones for their backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import bus, logs, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentHeartbeatDecoder,
    AgentLost,
    AgentRecord,
    AgentRecordDecoder,
    encode,
)
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.failover")


class LostAgents:
    """Marks agents lost and releases their allocations; see the module docstring."""

    def __init__(
        self,
        js: JetStreamContext,
        agents_kv: KeyValue,
        heartbeats_kv: KeyValue,
        state: ClusterState,
        wake: Callable[[], None],
        replace: Callable[[str, int, str], Awaitable[int]] | None = None,
    ) -> None:
        self.js = js
        self.agents_kv = agents_kv
        self.heartbeats_kv = heartbeats_kv
        self.state = state
        self.wake = wake
        #: ``replace(fn_key, inputs, reason)``: place containers for inputs handed back.
        self.replace = replace
        self.handed_back = 0
        #: Our last reconnect to NATS: no agent counts as silent from before it.
        self._silent_until = 0.0
        self._first_seen: dict[str, float] = {}
        self._draining: set[str] = set()
        self.marked = 0

    # ---- ClusterState listener -------------------------------------------------------
    def on_state_change(self, bucket: str, key: str) -> None:
        """An agent started draining: its containers need replacing soon, reconcile now."""
        if bucket != names.KV_AGENTS:
            return
        rec = self.state.agents.get(key)
        if rec is not None and rec.draining:
            if key not in self._draining:
                self._draining.add(key)
                self.wake()
        else:
            self._draining.discard(key)

    # ---- one pass --------------------------------------------------------------------
    def reconnected(self, now: float | None = None) -> None:
        """Our NATS connection is back (nats-server restarted): agents could not beat
        while it was down either, so each gets a full heartbeat timeout from now before
        it counts as lost."""
        self._silent_until = time.time() if now is None else now

    def last_heard(self, agent: AgentRecord, now: float) -> float:
        """When this agent was last known alive: its heartbeat, else first sight of it
        (never before our last reconnect)."""
        hb = self.state.heartbeats.get(agent.agent_id)
        first = self._first_seen.setdefault(agent.agent_id, now)
        if hb is not None:
            return max(hb.at, self._silent_until)
        return max(agent.started_at, first, self._silent_until)

    def suspects(self, now: float) -> list[AgentRecord]:
        timeout = self.state.heartbeat_timeout
        for gone in [a for a in self._first_seen if a not in self.state.agents]:
            del self._first_seen[gone]
        return [
            rec for rec in self.state.agents.values()
            if not rec.lost_at and now - self.last_heard(rec, now) > timeout
        ]

    async def check_once(self, now: float | None = None) -> list[str]:
        """Mark every agent past its heartbeat window lost. Returns the agents marked."""
        now = time.time() if now is None else now
        marked: list[str] = []
        for rec in self.suspects(now):
            if await self.mark_lost(rec, now):
                marked.append(rec.agent_id)
        if marked:
            self.wake()
        return marked

    async def mark_lost(self, seen: AgentRecord, now: float) -> bool:
        agent_id = seen.agent_id
        # Confirm from KV itself: our watch may lag behind a live agent's beats.
        raw_hb, _ = await bus.kv_get(self.heartbeats_kv, agent_id)
        hb = AgentHeartbeatDecoder.decode(raw_hb) if raw_hb else None
        last = max(hb.at, self._silent_until) if hb is not None else self.last_heard(seen, now)
        if now - last <= self.state.heartbeat_timeout:
            return False
        released: list[AgentRecord] = []

        def mark(raw: bytes | None) -> bytes | None:
            released.clear()
            if raw is None:
                return None
            rec = AgentRecordDecoder.decode(raw)
            if rec.lost_at or rec.started_at != seen.started_at:
                return None  # marked already, or a new incarnation registered meanwhile
            released.append(rec)
            return encode(msgspec.structs.replace(rec, lost_at=now, allocations={}))

        value, revision = await bus.kv_cas(self.agents_kv, agent_id, mark)
        if value is None:
            return False
        before = released[0]
        self.state.apply_agent(agent_id, AgentRecordDecoder.decode(value), revision)
        containers = sorted(set(before.allocations)
                            | {c.container_id for c in (hb.containers if hb else [])})
        self.marked += 1
        log.warning("agent_lost", agent_id=agent_id, last_heartbeat_at=last,
                    silent_for=round(now - last, 3), containers=containers)
        event = AgentLost(agent_id=agent_id, started_at=before.started_at,
                          last_heartbeat_at=last, lost_at=now, container_ids=containers)
        # Only the compare-and-set winner gets here; the msg id makes retries safe.
        for attempt in range(3):
            try:
                await bus.publish(self.js, names.agent_lost_subject(agent_id), encode(event),
                                  msg_id=f"lost-{agent_id}-{before.started_at!r}")
                break
            except Exception as e:
                log.warning("agent_lost_publish_failed", agent_id=agent_id, error=repr(e),
                            attempt=attempt + 1)
                await asyncio.sleep(0.5)
        if hb is not None:
            await self._hand_back(agent_id, hb)
        return True

    async def _hand_back(self, agent_id: str, hb: AgentHeartbeat) -> None:
        """Nak the inputs the lost agent's containers were running (their ack subjects,
        as its last heartbeat listed them), then place containers for them."""
        nc = bus.client_of(self.js)
        by_fn: dict[str, int] = {}
        for view in hb.containers:
            prefix = names.input_ack_prefix(view.fn_key)
            for subject in view.acks:
                if not subject.startswith(prefix):  # only that function's input acks
                    continue
                try:
                    await nc.publish(subject, b"-NAK")
                except Exception as e:  # not handed back: its AckWait still runs out
                    log.warning("input_hand_back_failed", agent_id=agent_id, error=repr(e))
                    continue
                by_fn[view.fn_key] = by_fn.get(view.fn_key, 0) + 1
        if not by_fn:
            return
        await bus.quiet(nc.flush())
        self.handed_back += sum(by_fn.values())
        log.warning("lost_inputs_handed_back", agent_id=agent_id, inputs=by_fn)
        if self.replace is None:
            return
        for fn_key, n in sorted(by_fn.items()):
            try:
                await self.replace(fn_key, n, "agent_lost")
            except Exception:  # the reconcile pass places them instead
                log.exception("lost_inputs_not_replaced", fn_key=fn_key)
