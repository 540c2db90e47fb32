"""The client reaper: an ephemeral app (and an ephemeral Dict or Queue) lives as long as
the client that made it keeps heartbeating.

Clients beat through any gateway into KV ``burst_clients`` (``<ws>.<client_id>``). Every
``interval`` the deciding scheduler reads the bucket and, per client that owns something
(a deployment record naming it, or an object recorded under it), compares its heartbeat
value with the one it saw last: a changed value resets the client's missed time, an
unchanged (or absent) one adds the time since the last pass. Time is counted only across
passes in which this reaper itself wrote to the store (its probe key) and read it back,
and some gateway's liveness record was fresh (clients can beat only through a gateway):
a NATS leader election, a scheduler cut off from NATS, or a restart of the only gateway
makes every client look silent, and that time never counts. A new leader starts every
client at zero. A client silent for ``timeout`` seconds of counted time is gone: its apps
are stopped (queued and running calls cancelled, containers stopped:
:func:`burst_core.apps.stop`), its objects deleted, its records removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst.wire import DictRequest, QueueRequest
from burst_core import apps, bus, logs, names
from burst_core.objects import Objects
from burst_core.schemas import ClientObjectDecoder, ServiceHeartbeatDecoder
from burst_core.volumes import Volumes
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.clients")


@dataclass
class _Seen:
    value: bytes | None
    missed: float = 0.0


class ClientReaper:
    def __init__(self, js: JetStreamContext, state: ClusterState, timeout: float,
                 interval: float, gateway_window: float) -> None:
        self.js = js
        self.state = state
        self.timeout = timeout
        self.interval = interval
        #: A gateway whose liveness record is older than this is not taking heartbeats.
        self.gateway_window = gateway_window
        self.reaped = 0
        self._seen: dict[str, _Seen] = {}  # "<ws>.<client_id>" -> what the last pass saw
        self._last_ok: float | None = None  # monotonic time of the last good pass
        # Deployments stopped, until our view of the deployments drops them (its watch may
        # lag a moment behind the deletion).
        self._stopped: set[str] = set()
        self._kv: KeyValue | None = None
        self._objects = Objects(js)

    def reset(self) -> None:
        """Forget what was counted (on becoming the leader: start every client at zero)."""
        self._seen.clear()
        self._last_ok = None

    async def run_once(self) -> int:
        """One pass; returns the clients reaped."""
        try:
            if self._kv is None:
                self._kv = await bus.ensure_kv(self.js, names.KV_CLIENTS)
            await self._kv.put(names.CLIENTS_PROBE_KEY, str(time.time()).encode())
            items = await bus.kv_items(self.js, names.KV_CLIENTS)
            services = await bus.kv_items(self.js, names.KV_SERVICES, prefix="gateway")
        except Exception as e:
            # The store is unreachable: this span is nobody's missed time.
            self._last_ok = None
            log.warning("client_reaper_store_unavailable", error=repr(e))
            return 0
        wall = time.time()
        if not any(wall - ServiceHeartbeatDecoder.decode(raw).at <= self.gateway_window
                   for raw in services.values()):
            self._last_ok = None  # no gateway to beat through: nobody's missed time either
            return 0
        now = time.monotonic()
        # A pass delayed far beyond its interval (this process starved) counts only as
        # long as a few intervals: a stall of ours is not the clients' silence.
        elapsed = 0.0 if self._last_ok is None else min(now - self._last_ok,
                                                        4 * self.interval + 1.0)
        self._last_ok = now
        owned = self._owners(items)
        reaped = 0
        for client in sorted(owned):
            value = items.get(client)  # None: no heartbeat (yet, or any more)
            seen = self._seen.get(client)
            if seen is None or seen.value != value:
                self._seen[client] = _Seen(value)
                continue
            seen.missed += elapsed
            if seen.missed >= self.timeout:
                await self._reap(client, owned[client], seen.missed)
                self._seen.pop(client, None)
                reaped += 1
        for client in [c for c in self._seen if c not in owned]:
            del self._seen[client]
        self.reaped += reaped
        return reaped

    def _owners(self, items: dict[str, bytes]) -> dict[str, list[str]]:
        """``<ws>.<client_id>`` -> the object keys it owns, for every client that owns an
        app or an object, or has a heartbeat record."""
        owned: dict[str, list[str]] = {}
        self._stopped &= {d.deployment_id for d in self.state.deployments.values()}
        for dep in self.state.deployments.values():
            if dep.client_id and dep.deployment_id not in self._stopped:
                owned.setdefault(names.client_key(dep.workspace, dep.client_id), [])
        for key in items:
            parts = key.split(".")
            if len(parts) == 4:
                owned.setdefault(f"{parts[0]}.{parts[1]}", []).append(key)
            elif len(parts) == 2:  # a heartbeat of a client owning nothing: dropped in time
                owned.setdefault(key, [])
        return owned

    async def _reap(self, client: str, objects: list[str], missed: float) -> None:
        ws, client_id = client.split(".", 1)
        assert self._kv is not None
        stopped = 0
        for dep in [d for d in self.state.deployments.values()
                    if d.workspace == ws and d.client_id == client_id
                    and d.deployment_id not in self._stopped]:
            await apps.stop(self.js, dep, reason=f"its client {client_id} stopped "
                            f"heartbeating {missed:.1f} s ago")
            self._stopped.add(dep.deployment_id)
            stopped += 1
        for key in objects:
            raw, _ = await bus.kv_get(self._kv, key)
            if raw is not None:
                obj = ClientObjectDecoder.decode(raw)
                try:
                    if obj.kind == "dict":
                        await self._objects.dict_op(ws, DictRequest(
                            name=obj.name, op="delete", create_if_missing=False))
                    elif obj.kind == "volume":
                        await Volumes(self.js, 0).delete(ws, obj.name)
                    else:
                        await self._objects.queue_op(ws, QueueRequest(name=obj.name,
                                                                      op="delete"))
                except Exception as e:  # deleted already: nothing left to remove
                    log.info("client_object_gone", key=key, error=repr(e))
            await self._kv.delete(key)
        await self._kv.delete(client)
        log.warning("client_reaped", workspace=ws, client_id=client_id, missed=round(missed, 2),
                    apps=stopped, objects=len(objects))
