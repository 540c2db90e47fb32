"""The latest figures of each agent (``AgentMetrics`` over core NATS), for ``/metrics``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from burst_core import names
from burst_core.schemas import AgentMetrics, AgentMetricsDecoder


class AgentFigures:
    """The latest ``AgentMetrics`` of each agent, as they arrive."""

    def __init__(self, stale: float) -> None:
        self.stale = stale
        self.latest: dict[str, tuple[float, AgentMetrics]] = {}
        self._sub: Any = None
        #: What /metrics reads from KV (spend, services), with when it was read.
        self._cache: dict[str, tuple[float, Any]] = {}

    async def start(self, nc: Any) -> None:
        self._sub = await nc.subscribe(names.SUBJECTS_AGENT_METRICS, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        try:
            m = AgentMetricsDecoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        self.latest[m.agent_id] = (time.monotonic(), m)

    async def cached(self, key: str, ttl: float, load: Callable[[], Awaitable[Any]]) -> Any:
        """``load()``'s answer, read again only once ``ttl`` seconds old (scrapes in
        between reuse it: the ledger and the services' records are KV reads)."""
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = await load()
        self._cache[key] = (now, value)
        return value

    def current(self) -> list[AgentMetrics]:
        horizon = time.monotonic() - self.stale
        self.latest = {k: v for k, v in self.latest.items() if v[0] >= horizon}
        return [m for _, m in sorted(self.latest.values(), key=lambda v: v[1].agent_id)]
