"""Warm pools in Redis: which containers each function has, and in what state.

One hash per function, ``names.redis_pool_key(fn_key)``: container id -> the agent's last
:class:`ContainerView` of it (msgpack), plus the set ``names.REDIS_POOLED_FUNCTIONS`` of
function keys that have a pool. Readers (dashboard, gateway) get a cheap, near-live view
without walking every agent's heartbeat.

Redis is a cache here: every heartbeat rewrites all the containers that agent reports, so
a flushed or restarted Redis is whole again after one heartbeat interval, and nothing the
scheduler decides is read back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from burst_core import logs, names
from burst_core.schemas import AgentHeartbeat, ContainerView, decoder, encode
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.pools")

ContainerViewDecoder = decoder(ContainerView)


class WarmPools:
    """Mirrors agents' heartbeats into Redis, one agent at a time, as they change."""

    def __init__(self, redis: Any, state: ClusterState, retry_delay: float = 0.5) -> None:
        self.redis = redis  # redis.asyncio.Redis
        self.state = state
        self.retry_delay = retry_delay
        # What we last wrote per agent: container id -> fn key (to remove what vanished).
        self._written: dict[str, dict[str, str]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # Registered as a ClusterState listener: cheap, synchronous, coalescing.
    def on_state_change(self, bucket: str, key: str) -> None:
        if bucket == names.KV_HEARTBEATS:
            self._dirty.add(key)
            self._wake.set()

    def start(self) -> None:
        self._dirty.update(self.state.heartbeats)
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="warm-pools")

    async def stop(self) -> None:
        # The flag as well as the cancel: a client library that swallows a cancellation
        # must not leave this loop running.
        self._closed = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for agent_id in sorted(dirty):
                try:
                    await self.sync_agent(agent_id, self.state.heartbeats.get(agent_id))
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # Redis down: the next heartbeat writes it all again
                    if self._closed:
                        return
                    log.warning("pool_sync_failed", agent_id=agent_id, error=repr(e))
                    self._dirty.add(agent_id)
            if self._dirty:
                await asyncio.sleep(self.retry_delay)
                self._wake.set()

    async def sync_agent(self, agent_id: str, heartbeat: AgentHeartbeat | None) -> None:
        """Write every container ``heartbeat`` lists; remove those it no longer lists."""
        now = {c.container_id: c for c in heartbeat.containers} if heartbeat else {}
        before = self._written.get(agent_id, {})
        pipe = self.redis.pipeline(transaction=False)
        for view in now.values():
            pipe.hset(names.redis_pool_key(view.fn_key), view.container_id, encode(view))
        for fn_key in {v.fn_key for v in now.values()}:
            pipe.sadd(names.REDIS_POOLED_FUNCTIONS, fn_key)
        gone: set[str] = set()
        for cid, fn_key in before.items():
            if cid not in now or now[cid].fn_key != fn_key:
                pipe.hdel(names.redis_pool_key(fn_key), cid)
                gone.add(fn_key)
        await pipe.execute()
        if now:
            self._written[agent_id] = {cid: v.fn_key for cid, v in now.items()}
        else:
            self._written.pop(agent_id, None)
        await self._forget_empty(gone)

    async def prune(self, now: float) -> int:
        """Remove entries no live agent reports (lost agents, a restart's leftovers)."""
        removed = 0
        fn_keys = sorted(_s(k) for k in await self.redis.smembers(names.REDIS_POOLED_FUNCTIONS))
        empty: set[str] = set()
        for fn_key in fn_keys:
            cids = [_s(c) for c in await self.redis.hkeys(names.redis_pool_key(fn_key))]
            # Read the live view after Redis, so a container written meanwhile is in it.
            live = self.state.live_views(now)
            stale = [c for c in cids if c not in live or live[c][1].fn_key != fn_key]
            if stale:
                removed += int(await self.redis.hdel(names.redis_pool_key(fn_key), *stale))
            if len(stale) == len(cids):
                empty.add(fn_key)
        for agent_id in list(self._written):
            if not self.state.is_live(agent_id, now):
                del self._written[agent_id]
        await self._forget_empty(empty)
        return removed

    async def _forget_empty(self, fn_keys: set[str]) -> None:
        for fn_key in fn_keys:
            if not await self.redis.exists(names.redis_pool_key(fn_key)):
                await self.redis.srem(names.REDIS_POOLED_FUNCTIONS, fn_key)

    async def read(self, fn_key: str) -> dict[str, ContainerView]:
        """One function's pool as Redis holds it now."""
        raw = await self.redis.hgetall(names.redis_pool_key(fn_key))
        return {_s(k): ContainerViewDecoder.decode(v) for k, v in raw.items()}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
