"""Budget evaluation: spend per budget from the ledger, alerts, and the durable hard cap.

The lease holder runs :meth:`BudgetEvaluator.evaluate` after folding (every
``budget_interval``), on the writer's in-memory ledger. For each budget it computes the
spend of its scope over its current period (:mod:`burst_core.budgets`) and:

- fires ``budget.threshold_crossed`` once per threshold per period (the thresholds fired
  are part of the state, so a restart fires nothing twice);
- fires ``budget.exceeded`` once per period when the spend reaches the limit, and for a
  hard cap marks the state ``exceeded``: the gateway refuses calls and the scheduler stops
  the scope's containers while it is set. It is cleared only by a new period, a raised
  limit, or the budget's removal; never by a restart or a Redis flush (it lives in KV);
- records the overshoot: spend beyond the limit (what ran until the containers stopped).

Events are queued before the state that records them is written: a crash in between
queues them again with the same ids, which the delivery path deduplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import alerts, budgets, bus, ledger, logs, names
from burst_core.schemas import (
    Budget,
    BudgetDecoder,
    BudgetState,
    BudgetStateDecoder,
    LedgerSnapshot,
    encode,
)

log = logs.get("burst.billing.budgets")


def _event_id(key: str, period: str, what: str) -> str:
    return "evt_" + hashlib.sha256(f"{key}/{period}/{what}".encode()).hexdigest()[:24]


class BudgetEvaluator:
    """Follows the budgets bucket; evaluates them against a ledger snapshot."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.budgets: dict[str, Budget] = {}
        self._states: dict[str, tuple[BudgetState | None, int]] = {}
        self._mirror: bus.KVMirror[Budget] | None = None
        self._state_kv: KeyValue | None = None

    async def start(self) -> None:
        self._state_kv = await self.js.key_value(names.KV_BUDGET_STATE)
        self._mirror = bus.KVMirror(self.js, names.KV_BUDGETS, BudgetDecoder,
                                    items=self.budgets, on_change=self._changed,
                                    what="budget")
        await self._mirror.start(timeout=10.0)

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    def _changed(self, change: bus.KVChange[Budget]) -> None:
        if change.value is None:  # cleared: its state goes with it
            self._states.pop(change.key, None)

    async def evaluate(self, snap: LedgerSnapshot, now: float | None = None) -> int:
        """Evaluate every budget against ``snap``; returns the states written."""
        now = time.time() if now is None else now
        written = 0
        for key, b in list(self.budgets.items()):
            try:
                written += await self._evaluate_one(key, b, snap, now)
            except Exception as e:  # one budget's trouble must not stall the others
                self._states.pop(key, None)  # re-read the state next time
                log.exception("budget_evaluation_failed", key=key, error=repr(e))
        await self._drop_orphans()
        return written

    async def _drop_orphans(self) -> None:
        """Remove states of budgets that were cleared (the scope reopens)."""
        assert self._state_kv is not None
        for key in [k for k in self._states if k not in self.budgets]:
            self._states.pop(key, None)
            with contextlib.suppress(Exception):
                await self._state_kv.delete(key)

    async def _state(self, key: str) -> tuple[BudgetState | None, int]:
        cached = self._states.get(key)
        if cached is not None:
            return cached
        assert self._state_kv is not None
        raw, rev = await bus.kv_get(self._state_kv, key)
        st = BudgetStateDecoder.decode(raw) if raw is not None else None
        self._states[key] = (st, rev)
        return st, rev

    async def _evaluate_one(self, key: str, b: Budget, snap: LedgerSnapshot, now: float) -> int:
        app, fn = budgets.scope_parts(b.scope)
        period, first, last = budgets.window(b.period, b.created_at, now)
        spend = ledger.spend(snap, b.workspace, app, fn, first, last)
        old, rev = await self._state(key)
        st = (msgspec.structs.replace(old) if old is not None and old.period == period
              else BudgetState(workspace=b.workspace, scope=b.scope, period=period,
                               limit=b.limit))
        st.limit, st.hard, st.spend = b.limit, b.hard, spend
        base = {"workspace": b.workspace, "scope": b.scope, "period": period,
                "limit": b.limit, "hard": b.hard}
        for t in b.alert_at:
            if t not in st.fired and spend >= b.limit * t / 100:
                await alerts.emit(self.js, b.workspace, budgets.EVENT_THRESHOLD,
                                  _event_id(key, period, f"t{t}"),
                                  {**base, "threshold": t, "spend": round(spend, 6)})
                st.fired = sorted({*st.fired, t})
        reached = spend >= b.limit
        # Sticky under the same terms: a ledger that is briefly behind (a new leader
        # replaying from an older snapshot) must never reopen a spent cap. Only a new
        # period, a changed limit or a cap turned soft (or the budget's removal) do.
        same_terms = old is not None and old.period == period and old.limit == b.limit
        if not reached and not same_terms:
            st.spend_at_exceeded = 0.0
        if reached and not st.spend_at_exceeded:
            await alerts.emit(self.js, b.workspace, budgets.EVENT_EXCEEDED,
                              _event_id(key, period, f"exceeded-{b.limit!r}"),
                              {**base, "spend": round(spend, 6)})
            st.spend_at_exceeded = spend
            st.exceeded_at = now
        st.exceeded = b.hard and (reached or (same_terms and old is not None and old.exceeded))
        st.overshoot = max(0.0, spend - b.limit)
        if old is not None and _same(old, st):
            return 0
        st.updated_at = now
        assert self._state_kv is not None
        data = encode(st)
        rev = (await self._state_kv.update(key, data, last=rev) if rev
               else await self._state_kv.create(key, data))
        self._states[key] = (st, rev)
        if st.exceeded and not (old and old.exceeded):
            log.warning("budget_exceeded", key=key, limit=b.limit, spend=round(spend, 6))
        return 1


def _same(a: BudgetState, b: BudgetState) -> bool:
    return msgspec.structs.replace(a, updated_at=0.0) == msgspec.structs.replace(
        b, updated_at=0.0)
