"""Refusing calls in a scope whose hard budget is spent (state from billing, in KV).

No caller asks billing: the guard watches the budget states billing writes and keeps the
exceeded ones in memory. :meth:`BudgetGuard.check` raises :class:`BudgetExceededError`
(HTTP 402) naming the budget, its limit and its spend. The watcher loads every state
before its first answer, so a fresh process (or one after a Redis flush: nothing here is
in Redis) refuses from its first call.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext

from burst.exception import BudgetExceededError
from burst_core import budgets, bus, logs, names
from burst_core.schemas import BudgetState, BudgetStateDecoder

log = logs.get("burst.calls.budgets")


class BudgetGuard:
    """The exceeded budget states, by KV key (``<ws>``, ``<ws>.<app>``, ``<ws>.<app>.<fn>``),
    watched from the first :meth:`check` on."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.exceeded: dict[str, BudgetState] = {}
        self._mirror: bus.KVMirror[BudgetState] | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if self._mirror is not None:
                return
            await budgets.ensure(self.js)
            mirror = bus.KVMirror(self.js, names.KV_BUDGET_STATE, BudgetStateDecoder,
                                  keep=lambda st: st.exceeded, what="budget_state",
                                  items=self.exceeded)
            await mirror.start(timeout=10.0)
            self._mirror = mirror

    async def check(self, workspace: str, app: str, function: str) -> None:
        """Raise :class:`BudgetExceededError` if a hard budget covering the function is spent."""
        if self._mirror is None:
            await self._start()
        if not self.exceeded:  # the usual case: no hard budget is spent
            return
        for key in (names.budget_key(workspace), names.budget_key(workspace, app),
                    names.budget_key(workspace, app, function)):
            st = self.exceeded.get(key)
            if st is not None:
                raise BudgetExceededError(
                    f"budget {st.scope!r} of workspace {workspace!r} is spent: limit "
                    f"${st.limit:.2f} per {st.period}, spend ${st.spend:.2f} (hard cap; "
                    f"raise it with `burst budget set {st.scope} --limit ...`)")

    async def stop(self) -> None:
        if self._mirror is not None:
            with contextlib.suppress(Exception):
                await self._mirror.stop()
