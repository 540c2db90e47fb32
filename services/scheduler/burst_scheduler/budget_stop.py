"""Hard budgets: stop the containers of a spent scope, and place none there.

Billing marks a budget state ``exceeded`` in KV (``burst_budget_state``) when a hard cap
is spent; this module watches those states. Every ``interval`` it orders each container
of an exceeded scope to stop (busy or not: a hard cap stops the spending), re-sending the
order while the container is still reported, and :meth:`blocked` tells the autoscaler not
to place new ones. Calls of the scope already accepted (queued, or running in a container
being stopped) are answered with ``BudgetExceededError``, once each, so no caller waits
for a container that will not start. The state is durable in KV, so a scheduler restart
or a Redis flush changes nothing: the watch loads it again before the first decision.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from burst_core import apps, budgets, bus, logs, names
from burst_core.schemas import BudgetState, BudgetStateDecoder, StopContainer, encode
from burst_core.service import cancel_and_wait
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.budget_stop")


class BudgetStop:
    def __init__(self, js: Any, state: ClusterState, interval: float = 0.5) -> None:
        self.js = js
        self.state = state
        self.interval = interval
        # budget key (<ws>, <ws>.<app>, <ws>.<app>.<fn>) -> its exceeded state
        self.exceeded: dict[str, BudgetState] = {}
        self.stops_ordered = 0
        #: Calls in the inputs stream answered with the cap's error.
        self.calls_refused = 0
        self._sent: dict[str, tuple[float, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._mirror: bus.KVMirror[BudgetState] | None = None

    @classmethod
    async def attach(cls, scheduler: Any) -> BudgetStop:
        """Start one for ``scheduler`` and make its autoscaler ask it before placing."""
        self = cls(scheduler.js, scheduler.state)
        await self.start()
        scheduler.autoscaler.blocked = self.blocked
        return self

    def blocked(self, fn_key: str) -> bool:
        """Whether a spent hard budget covers this function."""
        if not self.exceeded:
            return False
        ws, app, fn = names.split_function_key(fn_key)
        ref = self.state.function(fn_key)
        if ref is not None and ref.deployment.name:  # a run of app X: X's budgets cover it
            app = ref.deployment.name
        return bool({names.budget_key(ws), names.budget_key(ws, app),
                     names.budget_key(ws, app, fn)} & self.exceeded.keys())

    async def start(self) -> None:
        await budgets.ensure(self.js)
        self._mirror = bus.KVMirror(self.js, names.KV_BUDGET_STATE, BudgetStateDecoder,
                                    keep=lambda st: st.exceeded, what="budget_state",
                                    items=self.exceeded, on_change=self._changed)
        await self._mirror.start(timeout=10.0)
        self._tasks.append(asyncio.create_task(self._loop(), name="budget-stop"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._mirror is not None:
            await self._mirror.stop()

    def _changed(self, change: bus.KVChange[BudgetState]) -> None:
        if change.value is not None and change.previous is None:
            log.warning("budget_scope_stopping", key=change.key)

    async def _loop(self) -> None:
        while True:
            try:
                await self.stop_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next pass repeats what failed
                log.warning("budget_stop_failed", error=repr(e))
            await asyncio.sleep(self.interval)

    async def stop_once(self, now: float | None = None) -> int:
        """Order every container of an exceeded scope to stop, and answer the calls of
        its functions still in the inputs stream; returns stop orders sent."""
        if not self.exceeded:
            return 0
        now = time.time() if now is None else now
        for fn_key in [k for k in self.state.functions if self.blocked(k)]:
            # Queued (or handed back by a stopped container), they would wait for a
            # container that no longer starts: each caller gets one answer, the cap's error.
            n = await apps.cancel_inputs(
                self.js, fn_key, "its hard budget is spent", status="failure",
                error_type="burst.exception.BudgetExceededError")
            if n:
                self.calls_refused += n
                log.info("budget_calls_answered", fn_key=fn_key, calls=n)
        sent = 0
        for fn_key, containers in self.state.containers(now, shells=True).items():
            if not self.blocked(fn_key):
                continue
            for c in containers:
                last, n = self._sent.get(c.container_id, (0.0, 0))
                if now - last < 5.0:  # one order per container every few seconds
                    continue
                order = StopContainer(container_id=c.container_id, agent_id=c.agent_id,
                                      reason="budget_exceeded")
                await bus.publish(self.js, names.agent_orders_subject(c.agent_id),
                                  encode(order), msg_id=f"budget-stop-{c.container_id}-{n}")
                self._sent[c.container_id] = (now, n + 1)
                self.stops_ordered += 1
                sent += 1
                log.info("container_stop_ordered", reason="budget_exceeded", fn_key=fn_key,
                         container_id=c.container_id, agent_id=c.agent_id)
        return sent
