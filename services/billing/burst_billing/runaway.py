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

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import alerts, bus, logs, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentHeartbeatDecoder,
    AlertState,
    DeploymentRecordDecoder,
    encode,
)
from burst_core.service import cancel_and_wait

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
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[Any] = []
        self._state: KeyValue | None = None

    async def start(self) -> None:
        self._state = await self.js.key_value(names.KV_ALERT_STATE)
        deployments = await self.js.key_value(names.KV_DEPLOYMENTS)
        heartbeats = await self.js.key_value(names.KV_HEARTBEATS)
        loaded = asyncio.Event()
        dw = await deployments.watchall()
        self._watchers.append(dw)
        self._tasks.append(asyncio.create_task(self._deployments(dw, loaded)))
        await asyncio.wait_for(loaded.wait(), 10.0)  # timeouts known before any check
        hw = await heartbeats.watchall()
        self._watchers.append(hw)
        self._tasks.append(asyncio.create_task(self._heartbeats(hw)))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        for w in self._watchers:
            with contextlib.suppress(Exception):
                await w.stop()
        self._tasks, self._watchers = [], []

    async def _deployments(self, watcher: Any, loaded: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                loaded.set()
                continue
            if bus.kv_deleted(entry):
                continue  # its containers stop; the timeout stays known meanwhile
            try:
                d = DeploymentRecordDecoder.decode(entry.value)
            except msgspec.DecodeError as e:
                log.warning("deployment_undecodable", key=entry.key, error=repr(e))
                continue
            for fn in d.functions:
                self.check.timeouts[names.function_key(d.workspace, d.app, fn.name)] = fn.timeout

    async def _heartbeats(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None or bus.kv_deleted(entry):
                continue
            try:
                hb = AgentHeartbeatDecoder.decode(entry.value)
            except msgspec.DecodeError as e:
                log.warning("heartbeat_undecodable", key=entry.key, error=repr(e))
                continue
            runaways = self.check.check(hb)
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
