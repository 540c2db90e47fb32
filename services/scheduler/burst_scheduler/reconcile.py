"""Repairing drift between what should run and what does, every ``reconcile_interval``.

Scale-up reacts to signals (``autoscale.py``); this loop catches what signals cannot:

- inputs waiting for a function that has no active container (a signal published while
  the scheduler was down, or no capacity at the time): place one; and a backlog behind
  saturated containers: add one (queue depth is read here, never on the signal path);
- ``min_containers`` of every deployed function (also run right after a deployment
  changes);
- durable input consumers of functions with no container left: deleted (also done as
  soon as a function's last allocation disappears, see :meth:`Reconciler.on_state_change`);
- warm-pool entries no live agent reports: removed;
- waiting reasons of functions with nothing queued and their ``min_containers`` running:
  removed (a function that is only warm waits for nothing).

Lost agents' allocations are released by ``failover.py``, which places containers for
the inputs it hands back (:meth:`Reconciler.place_for`) and wakes this loop. Not handled
yet: an allocation whose container its agent never reports (placement lost, start failed
without an event) keeps its resources until the agent removes it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext

from burst_core import logs, names
from burst_scheduler.autoscale import Autoscaler
from burst_scheduler.pools import WarmPools
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.reconcile")

_CONSUMER_PAGE = 256  # JetStream lists consumers 256 at a time


@dataclass
class ReconcileReport:
    placed: dict[str, int] = field(default_factory=dict)
    consumers_deleted: list[str] = field(default_factory=list)
    pool_entries_removed: int = 0


class Reconciler:
    def __init__(
        self,
        js: JetStreamContext,
        state: ClusterState,
        autoscaler: Autoscaler,
        pools: WarmPools,
    ) -> None:
        self.js = js
        self.state = state
        self.autoscaler = autoscaler
        self.pools = pools
        self.wake = asyncio.Event()
        self._with_containers: set[str] = set()
        self._tasks: set[asyncio.Task[bool]] = set()

    # ---- reacting to the watches -----------------------------------------------------
    def on_state_change(self, bucket: str, key: str) -> None:
        """ClusterState listener: a deployment changed, or a function lost its last claim."""
        if bucket == names.KV_DEPLOYMENTS:
            self.wake.set()
        elif bucket == names.KV_AGENTS:
            now_with = set(self.state.containers(time.time()))
            for fn_key in self._with_containers - now_with:
                task = asyncio.create_task(self.autoscaler.reap_consumer(fn_key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._with_containers = now_with

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- one pass --------------------------------------------------------------------
    async def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        backlog = await self.backlog()
        for fn_key, waiting in backlog.items():
            if waiting > 0 and self.state.function(fn_key) is not None:
                n = await self._repair_backlog(fn_key, waiting)
                if n:
                    report.placed[fn_key] = report.placed.get(fn_key, 0) + n
        for fn_key in self.autoscaler.waiting_functions():
            if not backlog.get(fn_key):
                await self.autoscaler.clear_if_satisfied(fn_key)
        for fn_key in sorted(self.state.functions):
            n = await self.autoscaler.ensure_minimum(fn_key)
            if n:
                report.placed[fn_key] = report.placed.get(fn_key, 0) + n
        report.consumers_deleted = await self.sweep_consumers()
        report.pool_entries_removed = await self.pools.prune(time.time())
        if report.placed or report.consumers_deleted:
            log.info("reconciled", placed=report.placed,
                     consumers_deleted=report.consumers_deleted)
        return report

    async def backlog(self) -> dict[str, int]:
        """Messages in the inputs stream per function key (waiting or in flight), plus
        the web requests live agents hold (running or waiting for a slot)."""
        info = await self.js.stream_info(names.STREAM_INPUTS,
                                         subjects_filter=names.SUBJECTS_INPUTS)
        out: dict[str, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            fn_key = names.fn_key_of_input_subject(subject)
            if fn_key is not None:
                out[fn_key] = int(count)
        now = time.time()
        for agent_id, hb in list(self.state.heartbeats.items()):
            if hb.web_requests and self.state.has_fresh_heartbeat(agent_id, now):
                for fn_key, n in hb.web_requests.items():
                    out[fn_key] = out.get(fn_key, 0) + n
        return out

    async def _repair_backlog(self, fn_key: str, in_stream: int) -> int:
        """Enough containers for the inputs waiting: inputs beyond what the active
        containers (starting ones included) can take get containers of their own, placed
        at once rather than one per pass.

        Waiting are the inputs no container runs: the stream holds every input not yet
        answered, the containers' views say how many they run. The consumer's pending
        count alone misses inputs delivered before and due again (a retry after its
        backoff, an input handed back): counting only it, a function whose containers
        all died (inputs that crash theirs) got one container per pass, its inputs run
        one at a time. Inputs still waiting out a retry's backoff count too: their
        containers are ready when it ends."""
        now = time.time()
        containers = self.state.containers_of(fn_key, now)
        active = [c for c in containers if not self.autoscaler.stopping(c, now)]
        if self.state.function(fn_key) is None:
            return await self.autoscaler.scale_for_work(fn_key, "backlog")
        running = sum(c.view.in_flight for c in containers if c.view is not None)
        waiting = max(0, in_stream - running)
        try:
            info = await self.js.consumer_info(names.STREAM_INPUTS,
                                               names.function_consumer(fn_key))
            waiting = max(waiting, int(info.num_pending or 0))
        except nats.js.errors.NotFoundError:
            pass  # before a container made the function's consumer, nothing was delivered
        if not waiting and not active:
            return await self.autoscaler.scale_for_work(fn_key, "backlog")
        return await self.place_for(fn_key, waiting, "backlog")

    async def place_for(self, fn_key: str, waiting: int, reason: str) -> int:
        """Containers for ``waiting`` inputs beyond what the function's active containers
        (starting ones included) can take, all placed at once. Returns those placed."""
        ref = self.state.function(fn_key)
        if not waiting or ref is None:
            return 0
        now = time.time()
        containers = self.state.containers_of(fn_key, now)
        active = [c for c in containers if not self.autoscaler.stopping(c, now)]
        spec = ref.spec
        target = max(1, min(spec.target_inputs or spec.max_inputs, spec.max_inputs))
        room = 0
        for c in active:
            v = c.view
            if v is None or v.state == "starting":
                room += target  # placed or starting: it takes inputs once ready
            else:
                room += max(0, target - v.in_flight)
        if waiting <= room:
            return 0
        extra = -(-(waiting - room) // target)
        if spec.max_containers is not None:
            extra = min(extra, spec.max_containers - len(containers))
        return await self.autoscaler.place_more(fn_key, extra, reason)

    async def sweep_consumers(self) -> list[str]:
        """Delete the input consumers of functions that have no container."""
        deleted: list[str] = []
        offset = 0
        while True:
            page = await self.js.consumers_info(names.STREAM_INPUTS, offset=offset)
            for info in page:
                subjects = info.config.filter_subjects or [info.config.filter_subject or ""]
                fn_key = names.fn_key_of_input_subject(subjects[0])
                if fn_key is None or info.name != names.function_consumer(fn_key):
                    continue  # not a function's input consumer
                if self.state.containers_of(fn_key, time.time()):
                    continue
                if await self.autoscaler.reap_consumer(fn_key):
                    deleted.append(fn_key)
            if len(page) < _CONSUMER_PAGE:
                return deleted
            offset += len(page)
