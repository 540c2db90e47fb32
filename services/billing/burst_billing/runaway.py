"""Runaway containers: ``container.runaway_detected`` from the agents' heartbeats.

A container is a runaway when, by its agent's own clock (the heartbeat's ``at``):

- an input has been running (``ContainerView.busy_since``) for longer than
  ``factor`` x the function's timeout: the agent kills a container whose input times out,
  so an input that runs far past it means the kill did not take; or
- it has been ``stopping`` for longer than ``factor`` x the timeout: it is still alive
  after its stop and kill (the agent lists a container until its process is gone, and
  keeps metering it meanwhile). A view carries no stop time: the stop is dated by the
  first heartbeat that shows it, so a new leader may report such a runaway later, never
  earlier.

The lease holder runs the :class:`RunawayDetector` on the heartbeats bucket (the latest
heartbeat of every agent) and the deployments bucket (each function's timeout). The alert
fires once per container: the event id is derived from the container id, and a mark in
``burst_alert_state`` (written after the event is queued, so a crash in between queues it
again under the same id, which the delivery path deduplicates) stops any later pass or
leader from firing it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import alerts, bus, logs, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentHeartbeatDecoder,
    AlertState,
    DeploymentRecord,
    DeploymentRecordDecoder,
    encode,
)

log = logs.get("burst.billing.runaway")

KIND = "runaway"
#: A function whose deployment is not (or no longer) known: the SDK's default timeout.
DEFAULT_TIMEOUT = 300.0


@dataclasses.dataclass
class Runaway:
    container_id: str
    fn_key: str
    agent_id: str
    reason: str  # "input_overran" | "alive_after_stop"
    seconds: float  # how long it has run (or been stopping), by the agent's clock
    timeout: float


class RunawayCheck:
    """The pure part: heartbeats in, runaways out. ``stopping_since`` remembers when each
    container was first seen stopping (a view carries no stop time)."""

    def __init__(self, factor: float) -> None:
        if not factor >= 1.0:
            raise ValueError(f"runaway_factor={factor!r}: must be at least 1 (a multiple of "
                             "the function's timeout)")
        self.factor = factor
        self.timeouts: dict[str, float] = {}
        self.stopping_since: dict[str, float] = {}
        #: Containers that left their agent's heartbeat at the last check (stopped).
        self.gone: set[str] = set()
        self._by_agent: dict[str, set[str]] = {}

    def check(self, hb: AgentHeartbeat) -> list[Runaway]:
        out = []
        listed = {c.container_id for c in hb.containers}
        self.gone = self._by_agent.get(hb.agent_id, set()) - listed
        for gone in self.gone:
            self.stopping_since.pop(gone, None)
        self._by_agent[hb.agent_id] = listed
        for c in hb.containers:
            timeout = self.timeouts.get(c.fn_key, DEFAULT_TIMEOUT)
            limit = self.factor * timeout
            if c.state == "stopping":
                since = self.stopping_since.setdefault(c.container_id, hb.at)
                if hb.at - since > limit:
                    out.append(Runaway(c.container_id, c.fn_key, hb.agent_id,
                                       "alive_after_stop", hb.at - since, timeout))
                    continue
            else:
                self.stopping_since.pop(c.container_id, None)
            if c.busy_since is not None and c.in_flight > 0 and hb.at - c.busy_since > limit:
                out.append(Runaway(c.container_id, c.fn_key, hb.agent_id, "input_overran",
                                   hb.at - c.busy_since, timeout))
        return out


class RunawayDetector:
    """Follows heartbeats and deployments; fires each runaway container once."""

    def __init__(self, js: JetStreamContext, factor: float) -> None:
        self.js = js
        self.check = RunawayCheck(factor)
        self.fired: set[str] = set()
        self._mirrors: list[bus.KVMirror[Any]] = []
        self._state: KeyValue | None = None

    async def start(self) -> None:
        self._state = await self.js.key_value(names.KV_ALERT_STATE)
        deployments = bus.KVMirror(self.js, names.KV_DEPLOYMENTS, DeploymentRecordDecoder,
                                   on_change=self._deployment, what="deployment")
        self._mirrors.append(deployments)
        await deployments.start(timeout=10.0)  # timeouts known before any check
        heartbeats = bus.KVMirror(self.js, names.KV_HEARTBEATS, AgentHeartbeatDecoder,
                                  on_change=self._heartbeat, what="heartbeat")
        self._mirrors.append(heartbeats)
        await heartbeats.start(timeout=10.0)

    async def stop(self) -> None:
        for m in self._mirrors:
            await m.stop()
        self._mirrors = []

    def _deployment(self, change: bus.KVChange[DeploymentRecord]) -> None:
        d = change.value
        if d is None:
            return  # its containers stop; the timeout stays known meanwhile
        for fn in d.functions:
            self.check.timeouts[names.function_key(d.workspace, d.app, fn.name)] = fn.timeout

    async def _heartbeat(self, change: bus.KVChange[AgentHeartbeat]) -> None:
        if change.value is None:
            return
        runaways = self.check.check(change.value)
        self.fired -= self.check.gone  # its mark in KV stays, should it ever come back
        for r in runaways:
            try:
                await self.fire(r)
            except Exception as e:  # NATS trouble: the next heartbeat repeats it
                log.warning("runaway_fire_failed", container_id=r.container_id,
                            error=repr(e))

    async def fire(self, r: Runaway) -> bool:
        """Queue the event for ``r`` unless its container fired before; True if queued."""
        if r.container_id in self.fired:
            return False
        assert self._state is not None
        key = names.alert_state_key(KIND, r.container_id)
        raw, _ = await bus.kv_get(self._state, key)
        if raw is not None:
            self.fired.add(r.container_id)
            return False
        ws, app, fn = names.split_function_key(r.fn_key)
        data = {"workspace": ws, "app": app, "function": fn, "container_id": r.container_id,
                "agent_id": r.agent_id, "reason": r.reason, "seconds": round(r.seconds, 3),
                "timeout": r.timeout, "factor": self.check.factor}
        log.warning("runaway_detected", **data)
        await alerts.emit(self.js, ws, alerts.EVENT_RUNAWAY,
                          alerts.event_id(KIND, r.container_id), data)
        mark = AlertState(key=key, at=time.time(), detail=r.reason)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self._state.create(key, encode(mark))
        self.fired.add(r.container_id)
        return True
