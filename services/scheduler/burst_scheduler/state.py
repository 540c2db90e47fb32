"""The scheduler's view of the cluster, built from KV watches.

Three buckets feed it: deployments (which functions exist and their specs), agents (each
machine's capacity and the allocations claimed on it) and heartbeats (what each agent
reports running). The view is a cache: every decision that hands out a resource is made
by compare-and-set on the agent record (``claim.py``), never on this view alone.

A claim this scheduler wins is applied here at once (:meth:`ClusterState.apply_agent`), so
the next decision sees it without waiting for the watch; the watch only ever moves an
entry forward (higher KV revision), so a late echo of an older revision is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentHeartbeatDecoder,
    AgentRecord,
    AgentRecordDecoder,
    Allocation,
    ContainerView,
    DeploymentRecord,
    DeploymentRecordDecoder,
    FunctionSpec,
)
from burst_scheduler import placement
from burst_scheduler.capacity import CapacityIndex

log = logs.get("burst.scheduler.state")

#: Called with (bucket, key) after each applied change.
Listener = Callable[[str, str], None]


@dataclass(frozen=True)
class FunctionRef:
    """One deployed function: what a placement needs to name it."""

    fn_key: str
    deployment: DeploymentRecord
    spec: FunctionSpec


@dataclass(frozen=True)
class Container:
    """One container as the scheduler knows it: its claim, and the agent's last report."""

    container_id: str
    agent_id: str
    allocation: Allocation
    view: ContainerView | None  # None until a heartbeat of its agent lists it


class ClusterState:
    """Deployments, agents and heartbeats, indexed for the decisions."""

    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.deployments: dict[str, DeploymentRecord] = {}
        self.functions: dict[str, FunctionRef] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.heartbeats: dict[str, AgentHeartbeat] = {}
        self._revisions: dict[str, int] = {}
        self._views: dict[str, dict[str, ContainerView]] = {}
        #: Free capacity of the agents that accept work, kept in step with ``agents``.
        self.capacity = CapacityIndex()
        self.listeners: list[Listener] = []

    # ---- applying changes ------------------------------------------------------------
    def apply_deployment(self, key: str, record: DeploymentRecord | None) -> None:
        old = self.deployments.pop(key, None)
        if old is not None:
            for spec in old.functions:
                self.functions.pop(names.function_key(old.workspace, old.app, spec.name), None)
        if record is not None:
            self.deployments[key] = record
            for spec in record.functions:
                fn_key = names.function_key(record.workspace, record.app, spec.name)
                self.functions[fn_key] = FunctionRef(fn_key, record, spec)
        self._notify(names.KV_DEPLOYMENTS, key)

    def apply_agent(self, agent_id: str, record: AgentRecord | None, revision: int) -> bool:
        """Apply an agent record (None: deleted) if ``revision`` is newer than ours."""
        if revision and revision <= self._revisions.get(agent_id, 0):
            return False
        self._revisions[agent_id] = revision
        if record is None:
            self.agents.pop(agent_id, None)
        else:
            self.agents[agent_id] = record
        self.capacity.update(agent_id, record)
        self._notify(names.KV_AGENTS, agent_id)
        return True

    def apply_heartbeat(self, agent_id: str, heartbeat: AgentHeartbeat | None) -> None:
        if heartbeat is None:
            self.heartbeats.pop(agent_id, None)
            self._views.pop(agent_id, None)
        else:
            self.heartbeats[agent_id] = heartbeat
            self._views[agent_id] = {c.container_id: c for c in heartbeat.containers}
        self._notify(names.KV_HEARTBEATS, agent_id)

    def revision(self, agent_id: str) -> int:
        return self._revisions.get(agent_id, 0)

    def _notify(self, bucket: str, key: str) -> None:
        for listener in self.listeners:
            try:
                listener(bucket, key)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("state_listener_failed", bucket=bucket, key=key)

    # ---- reading ---------------------------------------------------------------------
    def function(self, fn_key: str) -> FunctionRef | None:
        return self.functions.get(fn_key)

    def is_live(self, agent_id: str, now: float) -> bool:
        agent = self.agents.get(agent_id)
        return agent is not None and not agent.lost_at and placement.is_fresh(
            self.heartbeats.get(agent_id), now, self.heartbeat_timeout
        )

    def has_fresh_heartbeat(self, agent_id: str, now: float) -> bool:
        return placement.is_fresh(self.heartbeats.get(agent_id), now, self.heartbeat_timeout)

    def live_agents(self, now: float) -> list[AgentRecord]:
        return placement.live_agents(self.agents, self.heartbeats, now, self.heartbeat_timeout)

    def containers(self, now: float, shells: bool = False) -> dict[str, list[Container]]:
        """Every container claimed on a live agent, by function key.

        A claim counts from the moment it is written (being placed) until the agent removes
        it (stopped). Claims on agents whose heartbeat is stale do not count: that machine
        is presumed lost. A ``burst shell`` session's container takes none of its
        function's work: only with ``shells`` (scaling and eviction never see it).
        """
        out: dict[str, list[Container]] = {}
        for agent in self.live_agents(now):
            views = self._views.get(agent.agent_id, {})
            for cid, alloc in agent.allocations.items():
                if alloc.shell_call_id and not shells:
                    continue
                out.setdefault(alloc.fn_key, []).append(
                    Container(cid, agent.agent_id, alloc, views.get(cid))
                )
        return out

    def containers_of(self, fn_key: str, now: float) -> list[Container]:
        return self.containers(now).get(fn_key, [])

    def live_views(self, now: float) -> dict[str, tuple[str, ContainerView]]:
        """Container id -> (agent id, view) for every container live agents report."""
        out: dict[str, tuple[str, ContainerView]] = {}
        for agent_id, views in self._views.items():
            if placement.is_fresh(self.heartbeats.get(agent_id), now, self.heartbeat_timeout):
                for cid, view in views.items():
                    out[cid] = (agent_id, view)
        return out


class StateWatcher:
    """Keeps a :class:`ClusterState` current from three KV mirrors."""

    def __init__(self, js: JetStreamContext, state: ClusterState, retry_delay: float) -> None:
        self.js = js
        self.state = state
        self.retry_delay = retry_delay
        self._mirrors: list[bus.KVMirror[Any]] = []

    async def start(self, timeout: float = 10.0) -> None:
        """Start watching; returns once every bucket's current entries are applied."""
        st = self.state
        self._mirrors = [
            bus.KVMirror(self.js, names.KV_DEPLOYMENTS, DeploymentRecordDecoder,
                         on_change=lambda c: st.apply_deployment(c.key, c.value),
                         retry_delay=self.retry_delay, what="deployment"),
            bus.KVMirror(self.js, names.KV_AGENTS, AgentRecordDecoder,
                         on_change=lambda c: st.apply_agent(c.key, c.value, c.revision),
                         retry_delay=self.retry_delay, what="agent_record"),
            bus.KVMirror(self.js, names.KV_HEARTBEATS, AgentHeartbeatDecoder,
                         on_change=lambda c: st.apply_heartbeat(c.key, c.value),
                         retry_delay=self.retry_delay, what="heartbeat"),
        ]
        await asyncio.gather(*(m.start(timeout) for m in self._mirrors))

    async def stop(self) -> None:
        for m in self._mirrors:
            await m.stop()
