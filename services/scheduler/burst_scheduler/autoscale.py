"""How many containers each function gets: scale-up on work, scale-down on idleness.

Invariants:
- a function's containers are its claims on live agents; stopping ones count against
  ``max_containers`` but not towards ``min_containers`` or capacity;
- scale-up (each ``input.accepted`` signal, each reconcile backlog) fills up to
  ``max(1, min_containers)``, then adds one only while every active container is full and
  none is being placed; never above ``max_containers``;
- scale-down (every ``scaledown_tick``) orders containers idle past ``scaledown_window``
  to stop with ``if_idle_since``, longest idle first, never below ``min_containers``; the
  agent ignores an order if the container took work since, so a stale view never stops
  a busy container;
- when a placement finds no room, the least recently used idle containers of other
  functions yield (``make_room.plan_idle``) and the waiting function is placed as soon as
  their claims are released; its waiting reason names what is evicted;
- every decision about one function runs under that function's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from opentelemetry.context import Context

from burst.exception import ResourceExhaustedError
from burst_core import apps, bus, fits, logs, names
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
from burst_core.tracing import ACCEPTED_HEADER, Tracing, headers_of
from burst_scheduler import make_room, placement
from burst_scheduler.claim import Claimer
from burst_scheduler.settings import SchedulerSettings
from burst_scheduler.state import ClusterState, Container, FunctionRef

#: The traced call whose signal is being handled (its context, call id and acceptance
#: time): a container placed for it gets a placement span in its trace.
placing: contextvars.ContextVar[tuple[Context, str, float] | None] = contextvars.ContextVar(
    "burst_placing", default=None)

log = logs.get("burst.scheduler.autoscale")


#: Stop reasons of a container that died by itself.
_CRASHES = frozenset({"crashed", "oom"})
#: Stop reasons of the scheduler's own orders: nothing to replace.
_ORDERED_STOPS = frozenset({"scaledown", "app_removed", "function_removed"})
_REASON_REFRESH = 10.0


@dataclass
class _StopOrder:
    idle_since: float
    ordered_at: float
    count: int


@dataclass
class _Room:
    """Idle containers being stopped so that one container of a waiting function fits."""

    agent_id: str
    stops: dict[str, float]  # container id -> the idle time its stop order named
    ordered_at: float


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
        #: fn_key -> the waiting reason last written, and when (rewritten when it changes,
        #: or every ``_REASON_REFRESH`` seconds).
        self._reasons: dict[str, tuple[str, float]] = {}
        self._rooms: dict[str, _Room] = {}  # fn_key -> idle containers evicted for it
        self._idle_seen: dict[str, set[str]] = {}  # agent id -> idle containers it reported
        self._tasks: set[asyncio.Task[int]] = set()
        self._room_made: dict[str, float] = {}  # fn_key -> when spot work was preempted
        self._start_failures: dict[str, tuple[int, float]] = {}  # fn_key -> (count, last)
        #: Called when new work may outgrow starting containers (wakes the reconcile pass).
        self.on_backlog: Callable[[], None] | None = None
        self._failed_deployment: dict[str, str] = {}  # fn_key -> deployment that failed
        self.placed = 0
        self.stop_orders = 0
        self.evicted = 0
        #: Whether a function may get no new containers (a spent hard budget, set by
        #: :mod:`burst_scheduler.budget_stop`).
        self.blocked: Callable[[str], bool] = lambda fn_key: False
        #: Spans of placements made for traced calls (set by the service's ``run``).
        self.tracing: Tracing | None = None

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
            # The work waits only if no active container has a free input slot: then idle
            # containers of other functions may yield (never for spare or buffer ones).
            waits = all(self.saturated(c) for c in containers if not self.stopping(c, now))
            if want == 0 and self.on_backlog is not None and any(
                    c.view is None or c.view.state == "starting" for c in containers):
                # Work keeps coming while containers are still starting: let the reconcile
                # pass size the scale-out by the backlog now, not at its next tick.
                self.on_backlog()
            return await self._place_n(ref, want, reason, evict=waits)

    async def trace_starting(self, fn_key: str, ctx: Context, call_id: str,
                             accepted_at: float) -> bool:
        """A traced call placed nothing (a container was placed for its function before
        its signal came, by an earlier call or the reconcile pass): its placement wait is
        for the newest container that may still be starting, if its agent says it was
        not ready when the call was accepted (this view comes from heartbeats, which lag:
        a container with no view yet, or a "starting" one, may have been serving for a
        while). Only then is the wait in its trace, with that container's start."""
        if self.tracing is None:
            return False
        now = time.time()
        starting = [c for c in self.state.containers_of(fn_key, now)
                    if (c.view is None or c.view.state == "starting")
                    and not self.stopping(c, now)]
        if not starting:
            return False
        c = max(starting, key=lambda c: c.allocation.placed_at)
        ref = self.state.function(fn_key)
        ws = ref.deployment.workspace if ref is not None else fn_key.split(".")[0]
        span = self.tracing.span("scheduler.placement", ctx, ws, call_id, start=accepted_at,
                                 attributes={"burst.container_id": c.container_id,
                                             "burst.agent_id": c.agent_id,
                                             "burst.placed_before": True})
        headers = {**headers_of(span, call_id), ACCEPTED_HEADER: repr(accepted_at)}
        try:
            reply = await self.js._nc.request(names.trace_container_subject(c.agent_id),
                                              c.container_id.encode(), headers=headers,
                                              timeout=self.settings.trace_attach_timeout)
        except Exception as e:  # no answer: the span is dropped (never ended)
            log.info("trace_attach_unanswered", container_id=c.container_id, error=repr(e))
            return False
        if reply.data != b"1":
            return False  # ready before the call came, or another call's: no wait
        span.end()
        return True

    async def place_more(self, fn_key: str, n: int, reason: str) -> int:
        """Place ``n`` more containers for ``fn_key`` (the caller sized ``n``)."""
        if n <= 0:
            return 0
        async with self._locks[fn_key]:
            ref = self.state.function(fn_key)
            if ref is None:
                return 0
            return await self._place_n(ref, n, reason, evict=True)

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
            return await self._place_n(ref, want, "min_containers", evict=False)

    async def place_shell(self, fn_key: str, call_id: str, asked_at: float) -> bool:
        """A new container for the ``burst shell`` session ``call_id``, whatever the
        function's containers (``max_containers`` included): it holds only that session's
        input. True once placed (or placed before: the signal came again); False when it
        cannot be (an unknown function, a spent budget, or no room for
        ``shell_place_timeout`` seconds: the session's caller gives up meanwhile); raises
        :class:`bus.Retry` while there is no room yet."""
        async with self._locks[fn_key]:
            ref = self.state.function(fn_key) or await self._load_function(fn_key)
            if ref is None or self.blocked(fn_key):
                log.info("shell_not_placed", fn_key=fn_key, call_id=call_id,
                         reason="unknown function" if ref is None else "budget spent")
                return False
            now = time.time()
            if any(c.allocation.shell_call_id == call_id
                   for c in self.state.containers(now, shells=True).get(fn_key, [])):
                return True
            if await self._place(ref, "shell", evict=True, shell_call_id=call_id):
                return True
        if time.time() - asked_at > self.settings.shell_place_timeout:
            log.warning("shell_not_placed", fn_key=fn_key, call_id=call_id,
                        reason=f"no room for {self.settings.shell_place_timeout:g} s")
            return False
        raise bus.Retry(self.settings.shell_place_retry, "no room for the shell's container")

    async def _place_n(self, ref: FunctionRef, n: int, reason: str, *, evict: bool) -> int:
        """Place up to ``n`` containers; with ``evict``, work waits for them, and idle
        containers of other functions may be stopped to make room."""
        placed = 0
        for _ in range(max(n, 0)):
            if not await self._place(ref, reason, evict):
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

    async def _place(self, ref: FunctionRef, reason: str, evict: bool,
                     shell_call_id: str = "") -> bool:
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
            allow_spot=not spec.nonpreemptible, shell_call_id=shell_call_id,
        )
        if claim is None:
            kept = await self._evict_idle(ref) if evict else []
            if kept is None:
                return False  # idle containers are making room: placed once they are gone
            now = time.monotonic()
            if now - self._no_capacity_logged.get(ref.fn_key, -1e9) > 10.0:
                self._no_capacity_logged[ref.fn_key] = now
                flog.warning("no_capacity", cpu=spec.resources.cpu,
                             memory_mb=spec.resources.memory_mb,
                             gpu_type=spec.resources.gpu_type,
                             gpu_count=spec.resources.gpu_count)
            never = fits.shortfall([spec.resources, *spec.gpu_fallbacks],
                                   self.state.live_agents(time.time()),
                                   self.settings.overcommit)
            reason = never or waiting_reason(spec)
            if never:
                await self._mark_waiting(ref.fn_key, reason)
                await self._fail_unsatisfiable(ref.fn_key, never)
                return False
            if kept:
                reason += (f"; idle containers of {self._names(kept, ref.fn_key)} are kept "
                           "for their min_containers")
            await self._mark_waiting(ref.fn_key, reason)
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
            app_name=ref.deployment.name,
            fail_calls_on_start_error=self._start_failures.get(ref.fn_key, (0, 0.0))[0] + 1
            >= self.settings.start_failures_to_fail_calls,
            shell_call_id=shell_call_id,
        )
        traced = placing.get()
        span = headers = None
        if traced is not None and self.tracing is not None:
            # The placement wait of a traced call: from its acceptance to this order.
            ctx, call_id, accepted_at = traced
            span = self.tracing.span("scheduler.placement", ctx, ref.deployment.workspace,
                                     call_id, start=accepted_at,
                                     attributes={"burst.container_id": claim.container_id,
                                                 "burst.agent_id": claim.agent_id})
            headers = headers_of(span, call_id)
        try:
            await bus.publish(self.js, names.agent_orders_subject(claim.agent_id),
                              encode(order), msg_id=f"place-{claim.container_id}",
                              headers=headers)
        except Exception as e:
            # The agent never heard of it: give the resources back so they are not held
            # by a container that will never exist.
            flog.warning("placement_publish_failed", error=repr(e))
            with contextlib.suppress(Exception):
                await self.claimer.release(claim.agent_id, claim.container_id)
            return False
        if span is not None:
            span.end()
        self.placed += 1
        flog.info("container_placed", gpu_indices=list(claim.gpu_indices),
                  revision=claim.revision)
        return True

    # ---- idle containers yield -------------------------------------------------------
    async def _evict_idle(self, ref: FunctionRef) -> list[str] | None:
        """Nothing fits ``ref``: stop least recently used idle containers of other
        functions so that one of its containers does (see ``make_room.plan_idle``).

        Returns None while room is being made (stops ordered now or before), else the
        functions whose idle containers could have made room but are kept for their
        ``min_containers`` (empty: idle containers cannot make room).
        """
        fn_key, spec = ref.fn_key, ref.spec
        now = time.time()
        room = self._rooms.get(fn_key)
        if room is not None and not self._room_pending(room, now):
            del self._rooms[fn_key]
            room = None
        allow_spot = not spec.nonpreemptible
        agents = [a for a in self.state.agents.values()
                  if placement.accepts_work(a) and (allow_spot or not a.spot)
                  and self.state.has_fresh_heartbeat(a.agent_id, now)]
        if not agents:
            return []
        candidates, spare = self._idle_candidates(fn_key, now)
        requests = [spec.resources, *spec.gpu_fallbacks]
        freed = {room.agent_id: set(room.stops)} if room else {}
        plan = make_room.plan_idle(agents, requests, candidates, spare,
                                   self.settings.overcommit, freed=freed)
        if plan is None:
            # Would the containers kept for min_containers have made room?
            unbounded = {k: len(candidates) for k in spare}
            blocked = make_room.plan_idle(agents, requests, candidates, unbounded,
                                          self.settings.overcommit, freed=freed)
            if blocked is None:
                return []
            taken: dict[str, int] = {}
            for cand in blocked.containers:
                taken[cand.fn_key] = taken.get(cand.fn_key, 0) + 1
            return sorted(k for k, n in taken.items() if n > spare.get(k, 0))
        if not plan.containers:
            if room is None:
                # It fits already (a claim raced us, or our view just caught up): the
                # next placement takes it.
                return []
            return None  # the stops ordered before make the room
        if room is None or room.agent_id != plan.agent_id:
            room = self._rooms[fn_key] = _Room(plan.agent_id, {}, now)
        by_id = {c.container_id: c for cs in self.state.containers(now).values() for c in cs}
        ordered: list[str] = []
        for cand in plan.containers:
            c = by_id.get(cand.container_id)
            if c is not None and await self._order_stop(cand.fn_key, c, "evicted", now):
                room.stops[cand.container_id] = cand.idle_since
                ordered.append(cand.fn_key)
        if not ordered:
            return []
        room.ordered_at = now
        self.evicted += len(ordered)
        log.warning("idle_containers_evicted", fn_key=fn_key, agent_id=plan.agent_id,
                    containers=[c.container_id for c in plan.containers])
        await self._mark_waiting(
            fn_key, f"evicting {self._count_names(ordered, fn_key)} to make room")
        return None

    def _idle_candidates(self, fn_key: str, now: float,
                         ) -> tuple[list[make_room.Candidate], dict[str, int]]:
        """Idle containers of other functions that may be stopped, and how many of each
        function may go (its active containers less its ``min_containers``)."""
        being_evicted = {cid for r in self._rooms.values() for cid in r.stops}
        candidates: list[make_room.Candidate] = []
        spare: dict[str, int] = {}
        for other, containers in self.state.containers(now).items():
            if other == fn_key:
                continue
            active = [c for c in containers if not self.stopping(c, now)]
            ref = self.state.function(other)
            spare[other] = len(active) - (ref.spec.min_containers if ref else 0)
            for c in active:
                v = c.view
                if (v is not None and v.state == "idle" and not v.in_flight
                        and v.idle_since is not None
                        and c.container_id not in being_evicted):
                    candidates.append(make_room.Candidate(c.container_id, c.agent_id, other,
                                                          v.idle_since))
        return candidates, spare

    def _room_pending(self, room: _Room, now: float) -> bool:
        """Whether the stops ordered for a room may still take effect: not refused (the
        container took work) and not past ``stop_order_retry`` (then ordered anew)."""
        if now - room.ordered_at >= self.settings.stop_order_retry:
            return False
        agent = self.state.agents.get(room.agent_id)
        if agent is None or not placement.accepts_work(agent):
            return False
        views = self.state.live_views(now)
        for cid, idle_since in list(room.stops.items()):
            if cid not in agent.allocations:
                del room.stops[cid]  # stopped: its resources are free
                continue
            seen = views.get(cid)
            if seen is not None and seen[1].state != "stopping" and (
                    seen[1].state != "idle" or seen[1].idle_since != idle_since):
                return False  # it took an input: the agent kept it
        return bool(room.stops)

    def on_state_change(self, bucket: str, key: str) -> None:
        """ClusterState listener (deciding replica only): an agent released claims of
        containers evicted for a waiting function -> place it now; an agent reports newly
        idle containers while functions wait -> let the reconcile pass try them."""
        if bucket == names.KV_AGENTS:
            agent = self.state.agents.get(key)
            for fn_key, room in list(self._rooms.items()):
                if room.agent_id != key:
                    continue
                gone = [cid for cid in room.stops
                        if agent is None or cid not in agent.allocations]
                if gone:
                    for cid in gone:
                        del room.stops[cid]
                    self._spawn(self.scale_for_work(fn_key, "room_made"))
        elif bucket == names.KV_HEARTBEATS:
            hb = self.state.heartbeats.get(key)
            idle = {c.container_id for c in (hb.containers if hb else [])
                    if c.state == "idle"}
            new = idle - self._idle_seen.get(key, set())
            if idle:
                self._idle_seen[key] = idle
            else:
                self._idle_seen.pop(key, None)
            if new and self._waiting and self.on_backlog is not None:
                self.on_backlog()

    def _spawn(self, coro: Coroutine[Any, Any, int]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """End the placements started by :meth:`on_state_change`."""
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _names(fn_keys: list[str], own: str) -> str:
        """``app/f and app/g``; functions of another workspace are not named."""
        ws = names.split_function_key(own)[0]
        shown: list[str] = []
        for k in fn_keys:
            k_ws, app, fn = names.split_function_key(k)
            name = f"{app}/{fn}" if k_ws == ws else "another workspace"
            if name not in shown:
                shown.append(name)
        return " and ".join(shown)

    @staticmethod
    def _count_names(fn_keys: list[str], own: str) -> str:
        """``2 idle containers of app/f and 1 of app/g``."""
        counts: dict[str, int] = {}
        for k in fn_keys:
            name = Autoscaler._names([k], own)
            counts[name] = counts.get(name, 0) + 1
        parts = [f"{n} of {name}" for name, n in counts.items()]
        first = next(iter(counts.values()))
        parts[0] = parts[0].replace(" of ", " idle container of " if first == 1
                                    else " idle containers of ", 1)
        return " and ".join(parts)

    def waiting_functions(self) -> list[str]:
        return list(self._waiting)

    async def clear_if_satisfied(self, fn_key: str) -> bool:
        """A function with nothing queued waits for nothing once its ``min_containers``
        are there: remove its waiting reason (a burst that outgrew the capacity, then
        ended, must not show "waiting" on a function that is only warm)."""
        async with self._locks[fn_key]:
            if fn_key not in self._waiting:
                return False
            ref = self.state.function(fn_key)
            now = time.time()
            active = [c for c in self.state.containers_of(fn_key, now)
                      if not self.stopping(c, now)]
            if ref is not None and len(active) < ref.spec.min_containers:
                return False
            self._rooms.pop(fn_key, None)
            await self._clear_waiting(fn_key)
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

    async def _fail_unsatisfiable(self, fn_key: str, why: str) -> None:
        """Past ``unsatisfiable_timeout`` of waiting for a container no agent could hold,
        the function's queued calls fail with ``why`` (later ones wait that long again)."""
        limit = self.settings.unsatisfiable_timeout
        since = self._waiting.get(fn_key)
        if limit <= 0 or since is None or time.time() - since < limit:
            return
        message = (f"no container could start for {limit:g} s "
                   f"(BURST_UNSATISFIABLE_TIMEOUT): {why}")
        n = await apps.cancel_inputs(
            self.js, fn_key, why, status="failure",
            error_type="burst.exception.ResourceExhaustedError", message=message,
            payload=pickle.dumps(ResourceExhaustedError(message)))
        self._waiting[fn_key] = time.time()
        log.warning("unsatisfiable_calls_failed", fn_key=fn_key, calls=n, reason=why)

    async def _mark_waiting(self, fn_key: str, reason: str) -> None:
        """Say why the function waits (KV ``burst_waiting``), for `burst app status`."""
        now = time.time()
        since = self._waiting.setdefault(fn_key, now)
        last = self._reasons.get(fn_key)
        if last is not None and last[0] == reason and now - last[1] < _REASON_REFRESH:
            return
        self._reasons[fn_key] = (reason, now)
        try:
            kv = await self.js.key_value(names.KV_WAITING)
            await kv.put(fn_key, encode(FunctionWaiting(fn_key=fn_key, reason=reason,
                                                        since=since, updated_at=now)))
        except Exception as e:  # visibility only: never in the way of placement
            self._reasons.pop(fn_key, None)  # written again next time
            log.warning("waiting_reason_not_saved", fn_key=fn_key, error=repr(e))

    async def _clear_waiting(self, fn_key: str) -> None:
        self._rooms.pop(fn_key, None)
        self._reasons.pop(fn_key, None)
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
