"""Refusing calls in a scope whose hard budget is spent (state from billing, in KV).

The gateway never calls billing: it watches the budget states billing writes and keeps
the exceeded ones in memory. :func:`check` is the one call ``submit()`` makes; it raises
:class:`BudgetExceededError` (HTTP 402) naming the budget, its limit and its spend. The
watcher starts with the first check and loads every state before answering, so a fresh
gateway (or one after a Redis flush: nothing here is in Redis) refuses from its first call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from burst.exception import BudgetExceededError
from burst_core import budgets, bus, logs, names
from burst_core.schemas import BudgetState, BudgetStateDecoder

log = logs.get("burst.gateway.budgets")


class BudgetGuard:
    """The exceeded budget states, by KV key (``<ws>``, ``<ws>.<app>``, ``<ws>.<app>.<fn>``)."""

    def __init__(self) -> None:
        self.exceeded: dict[str, BudgetState] = {}
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, js: Any) -> None:
        await budgets.ensure(js)
        mirror = bus.KVMirror(js, names.KV_BUDGET_STATE, BudgetStateDecoder,
                              keep=lambda st: st.exceeded, what="budget_state",
                              items=self.exceeded)
        await mirror.start(timeout=10.0)
        self._task = mirror._task
        self._loaded.set()

    def check(self, workspace: str, app: str, function: str) -> None:
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


async def guard(gw: Any) -> BudgetGuard:
    """The gateway's guard, started on first use (its task stops with the gateway)."""
    g: BudgetGuard | None = getattr(gw, "budget_guard", None)
    if g is not None and g._loaded.is_set():
        return g
    async with gw.__dict__.setdefault("_budget_guard_lock", asyncio.Lock()):
        g = getattr(gw, "budget_guard", None)
        if g is None:
            g = BudgetGuard()
            await g.start(gw.js)
            gw.budget_guard = g
            tasks = getattr(gw, "_tasks", None)
            if isinstance(tasks, list) and g._task is not None:
                tasks.append(g._task)
    return g


async def check(gw: Any, workspace: str, app: str, function: str) -> None:
    """Raise :class:`BudgetExceededError` if a hard budget covering the function is spent."""
    (await guard(gw)).check(workspace, app, function)


async def stop(gw: Any) -> None:
    g: BudgetGuard | None = getattr(gw, "budget_guard", None)
    if g is not None and g._task is not None:
        g._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await g._task
