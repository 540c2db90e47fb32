"""The scheduler replica: its cluster view, warm pools and decision loops, wired together.

Two kinds of work run here:

- *following* (every replica, always): the KV watches that build :class:`ClusterState`,
  and the warm pools mirrored into Redis;
- *deciding* (:meth:`Scheduler.start_decisions` / :meth:`Scheduler.stop_decisions`): the
  ``input.accepted`` consumer, the scale-down tick, the reconcile loop, the schedule
  ticker (``schedules.py``) and the client reaper (``clients.py``). They start and stop
  as one group, wrapped by the ``scheduler`` lease (``leader.py``): a replica that wins
  the lease starts deciding, one that loses it stops.

Even two replicas deciding at once stay safe where it matters: resources are claimed by
compare-and-set on agent records, so no GPU is ever given twice; the cost of two deciders
is at worst an extra container that scales down again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.lease import Lease
from burst_core.schemas import (
    ContainerEventDecoder,
    ContainerReady,
    ContainerStopped,
    InputAcceptedDecoder,
)
from burst_core.service import cancel_and_wait, heartbeat_loop
from burst_core.tracing import Tracing
from burst_scheduler import autoscale
from burst_scheduler.autoscale import Autoscaler
from burst_scheduler.budget_stop import BudgetStop
from burst_scheduler.claim import Claimer
from burst_scheduler.clients import ClientReaper
from burst_scheduler.failover import LostAgents
from burst_scheduler.leader import Leadership
from burst_scheduler.pools import WarmPools
from burst_scheduler.reconcile import Reconciler
from burst_scheduler.schedules import Ticker
from burst_scheduler.settings import SchedulerSettings
from burst_scheduler.state import ClusterState, StateWatcher

log = logs.get("burst.scheduler")


class Scheduler:
    """One scheduler replica; ``async with Scheduler(...)`` starts and stops it."""

    def __init__(self, settings: SchedulerSettings, js: JetStreamContext, redis: Any) -> None:
        self.settings = settings
        self.js = js
        self.redis = redis
        self.state = ClusterState(settings.heartbeat_timeout)
        self.watcher = StateWatcher(js, self.state, settings.retry_delay)
        self.pools = WarmPools(redis, self.state, settings.retry_delay)
        self._signals: bus.Consumer | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._started = False
        #: Spans of placements for traced calls (None: not traced; set by ``run``).
        self.tracing: Tracing | None = None

    async def start(self, decide: bool = True) -> None:
        """Follow the cluster; with ``decide``, run the decision loops at once too (else
        a :class:`~burst_scheduler.leader.Leadership` starts them when its lease is won)."""
        s = self.settings
        agents_kv = await self.js.key_value(names.KV_AGENTS)
        self.claimer = Claimer(agents_kv, self.state, s.overcommit, s.claim_attempts)
        self.autoscaler = Autoscaler(self.js, self.state, self.claimer, s)
        self.autoscaler.tracing = self.tracing
        self.reconciler = Reconciler(self.js, self.state, self.autoscaler, self.pools)
        self.autoscaler.on_backlog = self.reconciler.wake.set
        self.lost_agents = LostAgents(self.js, agents_kv, await self.js.key_value(
            names.KV_HEARTBEATS), self.state, self.reconciler.wake.set,
            replace=self.reconciler.place_for)
        # The nats-py JetStream context keeps its connection; signals go out on it.
        self.ticker = Ticker(self.js, bus.client_of(self.js), self.state, s,
                             lambda fn_key: self.autoscaler.blocked(fn_key))
        self.reaper = ClientReaper(self.js, self.state, s.client_timeout,
                                   s.client_reap_interval, 2 * s.service_heartbeat_interval)
        self.state.listeners.append(self.pools.on_state_change)
        await self.watcher.start()
        self.budget_stop = await BudgetStop.attach(self)  # hard budgets: stop, place nothing
        self.pools.start()
        # Lifecycle events feed the crash-loop backoff (every replica follows them, so a new
        # leader knows which functions are failing to start).
        self._lifecycle = await bus.client_of(self.js).subscribe(names.SUBJECTS_CONTAINER_EVENTS,
                                                      cb=self._on_container_event)
        self._started = True
        if decide:
            await self.start_decisions()
        log.info("scheduler_started", agents=len(self.state.agents),
                 functions=len(self.state.functions))

    async def _on_container_event(self, msg: Any) -> None:
        try:
            event = ContainerEventDecoder.decode(msg.data)
        except Exception:
            return
        if isinstance(event, ContainerReady | ContainerStopped):
            self.autoscaler.on_container_event(event)

    async def stop(self) -> None:
        if not self._started:
            return
        with contextlib.suppress(Exception):
            await self._lifecycle.unsubscribe()
        self._started = False
        await self.stop_decisions()
        await self.pools.stop()
        await self.watcher.stop()
        await self.budget_stop.stop()

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the decision loops (run by the lease holder only) --------------------------
    @property
    def deciding(self) -> bool:
        return self._signals is not None

    async def start_decisions(self) -> None:
        if self.deciding:
            return
        s = self.settings
        self.state.listeners.append(self.reconciler.on_state_change)
        self.state.listeners.append(self.lost_agents.on_state_change)
        self.state.listeners.append(self.autoscaler.on_state_change)
        self._signals = bus.Consumer(
            self.js, names.STREAM_CONTROL, names.CONSUMER_SCHEDULER_SIGNALS, self._on_signal,
            filter_subjects=[names.SUBJECTS_INPUT_ACCEPTED], ack_wait=s.signal_ack_wait,
            # A new durable skips old signals: the reconcile loop finds their inputs.
            deliver_new=True, concurrency=s.signal_concurrency, name="input_accepted",
        )
        await self._signals.start()
        self.reaper.reset()  # a new leader counts every client's silence from zero
        self._loops = [
            asyncio.create_task(self._every(s.scaledown_tick, self.autoscaler.scaledown_once,
                                            "scaledown"), name="scaledown"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._every(s.lost_check_interval, self.lost_agents.check_once,
                                            "lost_agents"), name="lost_agents"),
            asyncio.create_task(self._every(s.schedule_interval, self.ticker.run_once,
                                            "schedules"), name="schedules"),
            asyncio.create_task(self._every(s.client_reap_interval, self.reaper.run_once,
                                            "clients"), name="clients"),
        ]

    async def stop_decisions(self) -> None:
        if not self.deciding:
            return
        for listener in (self.reconciler.on_state_change, self.lost_agents.on_state_change,
                         self.autoscaler.on_state_change):
            with contextlib.suppress(ValueError):
                self.state.listeners.remove(listener)
        await cancel_and_wait(self._loops)
        self._loops = []
        assert self._signals is not None
        await self._signals.stop()
        self._signals = None
        await self.reconciler.stop()
        await self.autoscaler.stop()

    async def _on_signal(self, msg: Msg) -> None:
        try:
            signal = InputAcceptedDecoder.decode(msg.data)
        except msgspec.DecodeError as e:
            raise bus.Reject(f"undecodable input.accepted: {e}") from e
        if signal.shell:  # a `burst shell` session: a container of its own
            await self.autoscaler.place_shell(signal.fn_key, signal.call_id, signal.at)
            return
        ctx = (self.autoscaler.tracing.incoming(msg.headers)
               if msg.headers and self.autoscaler.tracing is not None else None)
        if ctx is None:
            await self.autoscaler.scale_for_work(signal.fn_key, "input_accepted")
            return
        # A traced call's signal: a container placed for it is part of its trace.
        token = autoscale.placing.set((ctx, signal.call_id, signal.at))
        try:
            placed = await self.autoscaler.scale_for_work(signal.fn_key, "input_accepted")
        finally:
            autoscale.placing.reset(token)
        if not placed:
            await self.autoscaler.trace_starting(signal.fn_key, ctx, signal.call_id, signal.at)

    async def _every(self, interval: float, step: Callable[[], Awaitable[Any]],
                     name: str) -> None:
        while True:
            _raise_if_cancelling()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep deciding: one failed pass is repaired by the next
                _raise_if_cancelling()
                log.exception("loop_step_failed", loop=name)
            await asyncio.sleep(interval)

    async def _reconcile_loop(self) -> None:
        wake = self.reconciler.wake
        while True:
            _raise_if_cancelling()
            wake.clear()
            try:
                await self.reconciler.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                _raise_if_cancelling()
                log.exception("loop_step_failed", loop="reconcile")
            # asyncio.wait, not wait_for: on 3.11 a cancel landing as wait_for times out is
            # swallowed, and this loop would never stop.
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait([waiter], timeout=self.settings.reconcile_interval)
            finally:
                waiter.cancel()

    def info(self) -> dict[str, str]:
        autoscaler = getattr(self, "autoscaler", None)
        return {
            "deciding": str(self.deciding).lower(),
            "agents": str(len(self.state.agents)),
            "functions": str(len(self.state.functions)),
            "placed": str(autoscaler.placed if autoscaler else 0),
            "stop_orders": str(autoscaler.stop_orders if autoscaler else 0),
            "evicted": str(autoscaler.evicted if autoscaler else 0),
            "agents_lost": str(self.lost_agents.marked if autoscaler else 0),
            "ticks_fired": str(self.ticker.fired if autoscaler else 0),
            "clients_reaped": str(self.reaper.reaped if autoscaler else 0),
        }


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation a library turned into another error (or swallowed)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def run(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    started: list[Scheduler] = []

    async def reconnected() -> None:
        for s in started:
            if hasattr(s, "lost_agents"):
                s.lost_agents.reconnected()

    nc = await bus.connect(settings.nats_url, f"scheduler-{settings.instance}",
                           reconnected=reconnected, ca=settings.nats_ca)
    js = nc.jetstream()
    await bus.ensure_topology(js, settings.topology())
    redis = aioredis.Redis.from_url(settings.redis_url)
    scheduler = Scheduler(settings, js, redis)
    scheduler.tracing = Tracing("scheduler", nc, settings.trace_sample,
                                settings.trace_otlp_endpoint,
                                enabled=settings.tracing)
    started.append(scheduler)
    await scheduler.start(decide=False)
    lease = Lease(await js.key_value(names.KV_LEASES), names.LEASE_SCHEDULER,
                  settings.instance, settings.lease_ttl)
    leadership = asyncio.create_task(Leadership(lease, scheduler).run(stop), name="leader")
    hb = asyncio.create_task(heartbeat_loop(
        js, "scheduler", settings.instance, settings.service_heartbeat_interval,
        info=lambda: {**scheduler.info(), "leader": str(lease.held).lower()},
        health_file=settings.health_file,
    ))
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await leadership  # steps down and releases the lease, so a successor need not wait
        hb.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await hb
        await scheduler.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
        await nc.drain()
