"""How many containers each function gets: scale-up on signals, scale-down on idleness.

Counting. A function's containers are the allocations claimed for it on live agents: from
the claim (being placed) until the agent removes it (stopped). A container is *stopping*
when its agent reports it so, when its agent is draining (preempted), or when this
scheduler has ordered it to stop and the agent still reports it idle since the same
moment; stopping containers count against ``max_containers`` (they still exist) but not
towards ``min_containers`` or capacity.

Scale-up (:meth:`Autoscaler.scale_for_work`, on every ``input.accepted`` signal and on a
backlog seen by the reconcile loop):

- fewer active containers than ``max(1, min_containers)`` -> place the difference;
- every active container reported busy with all its input slots full, none still being
  placed -> place one more (a burst ramps up one container per signal while the
  containers it already has are saturated);
- never more than ``max_containers`` in all.

Scale-down (:meth:`Autoscaler.scaledown_once`, every ``scaledown_tick``): a container idle
for its function's ``scaledown_window`` is ordered to stop with ``if_idle_since`` = the idle
time the agent reported, longest idle first, never below ``min_containers``. The agent
ignores the order if the container took work since, so a decision on a stale view never
kills a busy container. Containers of a removed app stop as soon as they are idle.

Every decision about one function runs under that function's lock, so the 20 signals of a
burst are decided one after the other on an up-to-date count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.schemas import (
    ContainerReady,
    ContainerStopped,
    DeploymentRecordDecoder,
    FunctionSpec,
    FunctionWaiting,
    Placement,
    StopContainer,
    encode,
)
from burst_scheduler import make_room
from burst_scheduler.claim import Claimer
from burst_scheduler.settings import SchedulerSettings
from burst_scheduler.state import ClusterState, Container, FunctionRef

log = logs.get("burst.scheduler.autoscale")


#: Stop reasons of a container that died by itself.
_CRASHES = frozenset({"crashed", "oom"})
#: Stop reasons of the scheduler's own orders: nothing to replace.
_ORDERED_STOPS = frozenset({"scaledown", "app_removed", "function_removed"})


@dataclass
class _StopOrder:
    idle_since: float
    ordered_at: float
    count: int


class Autoscaler:
    """Scale decisions for every function; see the module docstring for the rules."""

    def __init__(
        self,
        js: JetStreamContext,
        state: ClusterState,
        claimer: Claimer,
        settings: SchedulerSettings,
    ) -> None:
        self.js = js
        self.state = state
        self.claimer = claimer
        self.settings = settings
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._stops: dict[str, _StopOrder] = {}
        self._no_capacity_logged: dict[str, float] = {}
        self._waiting: dict[str, float] = {}  # fn_key -> waiting since
        self._room_made: dict[str, float] = {}  # fn_key -> when spot work was preempted
        self._start_failures: dict[str, tuple[int, float]] = {}  # fn_key -> (count, last)
        #: Called when new work may outgrow starting containers (wakes the reconcile pass).
        self.on_backlog: Callable[[], None] | None = None
        self._failed_deployment: dict[str, str] = {}  # fn_key -> deployment that failed
        self.placed = 0
        self.stop_orders = 0
        #: Whether a function may get no new containers (a spent hard budget, set by
        #: :mod:`burst_scheduler.budget_stop`).
        self.blocked: Callable[[str], bool] = lambda fn_key: False

    # ---- counting --------------------------------------------------------------------
    def stopping(self, c: Container, now: float) -> bool:
        agent = self.state.agents.get(c.agent_id)
        if agent is not None and agent.draining:
            return True  # preempted or draining: it will not take work again
        if c.view is None:
            return False
        if c.view.state == "stopping":
            return True
        order = self._stops.get(c.container_id)
        return (
            order is not None
            and c.view.state == "idle"
            and c.view.idle_since == order.idle_since
            and now - order.ordered_at < self.settings.stop_order_retry
        )

    @staticmethod
    def saturated(c: Container, target: int = 0) -> bool:
        """Whether a container is at its target of inputs (``@burst.concurrent``'s
        ``target_inputs``; its ``max_inputs`` when there is none)."""
        v = c.view
        if v is None or v.state != "busy":
            return False
        return v.in_flight >= max(1, min(target or v.max_inputs, v.max_inputs))

    def wanted(self, ref: FunctionRef, containers: list[Container], now: float) -> int:
        """How many containers to add for ``ref`` given new work."""
        spec = ref.spec
        active = [c for c in containers if not self.stopping(c, now)]
        floor = max(1, spec.min_containers)
        if len(active) < floor:
            want = floor - len(active)
        elif all(self.saturated(c, spec.target_inputs) for c in active):
            want = 1
        else:
            want = 0
        # Under load, keep ``buffer_containers`` ready beyond what is busy (Modal's knob):
        # the next burst of work finds warm containers. The work that triggered this
        # decision takes one free container.
        free_after = sum(1 for c in active if not self.saturated(c, spec.target_inputs)) + want - 1
        want += max(0, spec.buffer_containers - max(free_after, 0))
        if spec.max_containers is not None:
            want = min(want, spec.max_containers - len(containers))
        return max(want, 0)

    # ---- scale-up --------------------------------------------------------------------
    async def scale_for_work(self, fn_key: str, reason: str) -> int:
        """A function has work: place what it needs. Returns the containers placed."""
        async with self._locks[fn_key]:
            ref = self.state.function(fn_key) or await self._load_function(fn_key)
            if ref is None:
                log.info("work_for_unknown_function", fn_key=fn_key, reason=reason)
                return 0
            now = time.time()
            containers = self.state.containers_of(fn_key, now)
            want = self.wanted(ref, containers, now)
            if want == 0 and self.on_backlog is not None and any(
                    c.view is None or c.view.state == "starting" for c in containers):
                # Work keeps coming while containers are still starting: let the reconcile
                # pass size the scale-out by the backlog now, not at its next tick.
                self.on_backlog()
            return await self._place_n(ref, want, reason)

    async def place_more(self, fn_key: str, n: int, reason: str) -> int:
        """Place ``n`` more containers for ``fn_key`` (the caller sized ``n``)."""
        if n <= 0:
            return 0
        async with self._locks[fn_key]:
            ref = self.state.function(fn_key)
            if ref is None:
                return 0
            return await self._place_n(ref, n, reason)

    async def ensure_minimum(self, fn_key: str) -> int:
        """Keep ``min_containers`` active for a deployed function (no work needed)."""
        async with self._locks[fn_key]:
            ref = self.state.function(fn_key)
            if ref is None or ref.spec.min_containers <= 0:
                return 0
            now = time.time()
            containers = self.state.containers_of(fn_key, now)
            active = [c for c in containers if not self.stopping(c, now)]
            want = ref.spec.min_containers - len(active)
            if ref.spec.max_containers is not None:
                want = min(want, ref.spec.max_containers - len(containers))
            return await self._place_n(ref, want, "min_containers")

    async def _place_n(self, ref: FunctionRef, n: int, reason: str) -> int:
        placed = 0
        for _ in range(max(n, 0)):
            if not await self._place(ref, reason):
                break
            placed += 1
        return placed

    # ---- crash-loop backoff ----------------------------------------------------------
    def on_container_event(self, event: ContainerReady | ContainerStopped) -> None:
        """Count failed starts per function; a container that got ready resets the count.
        A container gone by itself (crashed, out of memory, failed to start) may leave
        inputs without one: the reconcile pass looks now, not at its next tick."""
        if isinstance(event, ContainerReady):
            self._start_failures.pop(event.fn_key, None)
            return
        if event.reason not in _ORDERED_STOPS and self.on_backlog is not None:
            self.on_backlog()
        if event.reason == "failed_to_start" or (
                event.reason in _CRASHES and not event.inputs_running):
            # A container that crashed with inputs running failed with them: their
            # retries pace them, in parallel. One that crashed with none is a crash loop
            # (it dies whatever it is given): slowed like a failed start.
            key = names.function_key(event.workspace, event.app, event.function)
            count, _ = self._start_failures.get(key, (0, 0.0))
            self._start_failures[key] = (count + 1, event.at or time.time())
            ref = self.state.function(key)
            # A redeploy (new code) starts with a clean slate.
            self._failed_deployment[key] = ref.deployment.deployment_id if ref else ""

    def backoff_left(self, fn_key: str, now: float) -> float:
        """Seconds before another container of ``fn_key`` may be placed (0: now)."""
        count, last = self._start_failures.get(fn_key, (0, 0.0))
        if count == 0:
            return 0.0
        s = self.settings
        factor: int = 2 ** (count - 1)  # count >= 1: an int (typeshed says Any)
        delay = min(s.start_backoff_max, s.start_backoff_initial * factor)
        return max(0.0, last + delay - now)

    async def _place(self, ref: FunctionRef, reason: str) -> bool:
        if self.blocked(ref.fn_key):
            return False
        if self._failed_deployment.get(ref.fn_key, ref.deployment.deployment_id) != (
                ref.deployment.deployment_id):
            self._start_failures.pop(ref.fn_key, None)
            self._failed_deployment.pop(ref.fn_key, None)
        wait = self.backoff_left(ref.fn_key, time.time())
        if wait > 0:
            count = self._start_failures[ref.fn_key][0]
            await self._mark_waiting(ref.fn_key, f"{count} containers failed to start (or "
                                                 f"crashed idle) in a row: next try in "
                                                 f"{wait:.0f} s")
            return False
        spec = ref.spec
        flog = log.bind(fn_key=ref.fn_key, reason=reason)
        claim = await self.claimer.claim(
            ref.fn_key, [spec.resources, *spec.gpu_fallbacks],
            allow_spot=not spec.nonpreemptible,
        )
        if claim is None:
            now = time.monotonic()
            if now - self._no_capacity_logged.get(ref.fn_key, -1e9) > 10.0:
                self._no_capacity_logged[ref.fn_key] = now
                flog.warning("no_capacity", cpu=spec.resources.cpu,
                             memory_mb=spec.resources.memory_mb,
                             gpu_type=spec.resources.gpu_type,
                             gpu_count=spec.resources.gpu_count)
                await self._mark_waiting(ref.fn_key, waiting_reason(spec))
            if spec.nonpreemptible:
                await self._make_room(ref)  # throttled by its own clock
            return False
        await self._clear_waiting(ref.fn_key)
        flog = flog.bind(container_id=claim.container_id, agent_id=claim.agent_id)
        order = Placement(
            container_id=claim.container_id,
            agent_id=claim.agent_id,
            workspace=ref.deployment.workspace,
            app=ref.deployment.app,
            deployment_id=ref.deployment.deployment_id,
            bundle_hash=ref.deployment.bundle_hash,
            function=spec,
            resources=claim.resources,
            gpu_indices=list(claim.gpu_indices),
            spot=claim.spot,
            placed_at=claim.placed_at,
        )
        try:
            await bus.publish(self.js, names.agent_orders_subject(claim.agent_id),
                              encode(order), msg_id=f"place-{claim.container_id}")
        except Exception as e:
            # The agent never heard of it: give the resources back so they are not held
            # by a container that will never exist.
            flog.warning("placement_publish_failed", error=repr(e))
            with contextlib.suppress(Exception):
                await self.claimer.release(claim.agent_id, claim.container_id)
            return False
        self.placed += 1
        flog.info("container_placed", gpu_indices=list(claim.gpu_indices),
                  revision=claim.revision)
        return True

    async def _make_room(self, ref: FunctionRef) -> int:
        """On-demand work does not fit: preempt preemptible containers on an on-demand
        agent (see ``make_room``). Returns the stop orders sent."""
        now = time.time()
        if now - self._room_made.get(ref.fn_key, -1e9) < self.settings.stop_order_retry:
            return 0  # the last stops are still taking effect
        eviction = make_room.plan(self.state, ref.spec, self.settings.overcommit, now)
        if eviction is None:
            return 0
        self._room_made[ref.fn_key] = now
        for cid in eviction.container_ids:
            order = StopContainer(container_id=cid, agent_id=eviction.agent_id,
                                  reason="preempted")
            await bus.publish(self.js, names.agent_orders_subject(eviction.agent_id),
                              encode(order), msg_id=f"room-{cid}")
        log.warning("preempted_for_on_demand", fn_key=ref.fn_key, agent_id=eviction.agent_id,
                    containers=eviction.container_ids)
        return len(eviction.container_ids)

    async def _mark_waiting(self, fn_key: str, reason: str) -> None:
        """Say why the function waits (KV ``burst_waiting``), for `burst app status`."""
        now = time.time()
        since = self._waiting.setdefault(fn_key, now)
        try:
            kv = await self.js.key_value(names.KV_WAITING)
            await kv.put(fn_key, encode(FunctionWaiting(fn_key=fn_key, reason=reason,
                                                        since=since, updated_at=now)))
        except Exception as e:  # visibility only: never in the way of placement
            log.warning("waiting_reason_not_saved", fn_key=fn_key, error=repr(e))

    async def _clear_waiting(self, fn_key: str) -> None:
        if self._waiting.pop(fn_key, None) is None:
            return
        self._no_capacity_logged.pop(fn_key, None)
        with contextlib.suppress(Exception):
            await (await self.js.key_value(names.KV_WAITING)).delete(fn_key)

    async def _load_function(self, fn_key: str) -> FunctionRef | None:
        # The signal can outrun our watch of the deployment it names: read it directly.
        try:
            ws, app, _ = names.split_function_key(fn_key)
            kv = await self.js.key_value(names.KV_DEPLOYMENTS)
            raw, _rev = await bus.kv_get(kv, names.deployment_key(ws, app))
        except ValueError:
            return None
        if raw is None:
            return None
        self.state.apply_deployment(names.deployment_key(ws, app),
                                    DeploymentRecordDecoder.decode(raw))
        return self.state.function(fn_key)

    # ---- scale-down ------------------------------------------------------------------
    async def scaledown_once(self, now: float | None = None) -> int:
        """Order idle containers past their window to stop. Returns orders sent."""
        now = time.time() if now is None else now
        by_fn = self.state.containers(now)
        known = {c.container_id for cs in by_fn.values() for c in cs}
        for cid in [c for c in self._stops if c not in known]:
            del self._stops[cid]
        sent = 0
        for fn_key, containers in by_fn.items():
            if not any(c.view is not None and c.view.state == "idle" for c in containers):
                continue
            async with self._locks[fn_key]:
                sent += await self._scaledown_function(fn_key, now)
        return sent

    async def _scaledown_function(self, fn_key: str, now: float) -> int:
        containers = self.state.containers_of(fn_key, now)
        ref = self.state.function(fn_key)
        # A removed app (or function) keeps no containers and waits for nothing once they
        # are idle.
        window = ref.spec.scaledown_window if ref else 0.0
        floor = ref.spec.min_containers if ref else 0
        if ref is not None:
            reason = "scaledown"
        else:
            ws, app, _ = names.split_function_key(fn_key)
            removed = names.deployment_key(ws, app) not in self.state.deployments
            reason = "app_removed" if removed else "function_removed"
        active = [c for c in containers if not self.stopping(c, now)]
        excess = len(active) - floor
        if excess <= 0:
            return 0
        idle = sorted(
            (c for c in active
             if c.view is not None and c.view.state == "idle"
             and c.view.idle_since is not None and now - c.view.idle_since >= window),
            key=lambda c: (c.view.idle_since if c.view else 0.0, c.container_id),
        )
        sent = 0
        for c in idle[:excess]:
            if await self._order_stop(fn_key, c, reason, now):
                sent += 1
        return sent

    async def _order_stop(self, fn_key: str, c: Container, reason: str, now: float) -> bool:
        assert c.view is not None and c.view.idle_since is not None
        prev = self._stops.get(c.container_id)
        count = prev.count + 1 if prev and prev.idle_since == c.view.idle_since else 1
        order = StopContainer(container_id=c.container_id, agent_id=c.agent_id,
                              reason=reason, if_idle_since=c.view.idle_since)
        flog = log.bind(fn_key=fn_key, container_id=c.container_id, agent_id=c.agent_id)
        try:
            await bus.publish(
                self.js, names.agent_orders_subject(c.agent_id), encode(order),
                msg_id=f"stop-{c.container_id}-{c.view.idle_since!r}-{count}",
            )
        except Exception as e:
            flog.warning("stop_publish_failed", error=repr(e))
            return False
        self._stops[c.container_id] = _StopOrder(c.view.idle_since, now, count)
        self.stop_orders += 1
        flog.info("container_stop_ordered", reason=reason, idle_since=c.view.idle_since,
                  idle_for=round(now - c.view.idle_since, 3), attempt=count)
        return True

    # ---- input consumers -------------------------------------------------------------
    def claimed(self, fn_key: str) -> bool:
        """Whether an agent not marked lost still holds a claim for ``fn_key``, whatever
        our view of its heartbeat: a view gone stale (our watch lagging after a NATS
        restart) must not take a live container's consumer away. A really lost agent's
        claims are released when it is marked lost (``failover.py``)."""
        return any(alloc.fn_key == fn_key
                   for agent in self.state.agents.values() if not agent.lost_at
                   for alloc in agent.allocations.values())

    async def reap_consumer(self, fn_key: str) -> bool:
        """Delete a function's durable input consumer once it has no container left.

        Under the function's lock: no placement can be in flight, and the agent creates the
        consumer only after receiving a placement, so the deletion never races a new one.
        """
        async with self._locks[fn_key]:
            if self.state.containers_of(fn_key, time.time()) or self.claimed(fn_key):
                return False
            try:
                # Never while inputs are delivered but not acked (a retry waiting out its
                # backoff is one): a new consumer would redeliver them as first deliveries,
                # without their backoff and without the attempt they are at.
                info = await self.js.consumer_info(names.STREAM_INPUTS,
                                                   names.function_consumer(fn_key))
                if info.num_ack_pending or info.num_redelivered:
                    return False
                await self.js.delete_consumer(names.STREAM_INPUTS,
                                              names.function_consumer(fn_key))
            except nats.js.errors.NotFoundError:
                return False
            log.info("input_consumer_deleted", fn_key=fn_key)
            return True


def waiting_reason(spec: FunctionSpec) -> str:
    """"waiting for 2×H100: none free", or for CPU and memory when no GPU is asked."""
    wants = []
    for r in [spec.resources, *spec.gpu_fallbacks]:
        if r.gpu_type:
            wants.append(f"{r.gpu_count}×{r.gpu_type}")
        else:
            wants.append(f"{r.cpu:g} CPU and {r.memory_mb} MiB")
    return f"waiting for {' or '.join(wants)}: none free"
