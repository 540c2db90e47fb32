"""Claiming resources on an agent by compare-and-set on its KV record.

The claim is the decision. The capacity index (``capacity.py``, the same choice as
:func:`placement.choose_first`) proposes an agent from the scheduler's (possibly stale)
view; the compare-and-set then re-checks the fit against the agent record it replaces and
writes the allocation, GPU indices included, computed from
that exact revision. If another scheduler (or the agent itself) wrote in between, the
write fails and is retried on the fresh record; if the resources are gone, the view is
refreshed with what the KV holds and another agent is picked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from burst_core import bus, logs
from burst_core.schemas import AgentRecord, AgentRecordDecoder, Resources, encode
from burst_scheduler import placement
from burst_scheduler.state import ClusterState

log = logs.get("burst.scheduler.claim")


def new_container_id() -> str:
    return "ct-" + uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Claim:
    """Resources won on one agent for one new container."""

    container_id: str
    agent_id: str
    resources: Resources
    gpu_indices: tuple[int, ...]
    spot: bool
    placed_at: float
    revision: int


class Claimer:
    """Claims and releases allocations on agent records."""

    def __init__(
        self, kv: KeyValue, state: ClusterState, overcommit: float, attempts: int = 8
    ) -> None:
        self.kv = kv
        self.state = state
        self.overcommit = overcommit
        self.attempts = attempts
        self._busy: dict[str, int] = {}  # agent id -> claims in flight from this process

    async def claim(
        self, fn_key: str, requests: Sequence[Resources], *, allow_spot: bool = True,
        shell_call_id: str = "",
    ) -> Claim | None:
        """Claim resources for one container of ``fn_key``, or None when nothing fits.

        ``requests`` are tried in order (the function's resources, then its fallbacks).
        With ``shell_call_id`` the container is that ``burst shell`` session's alone.
        """
        exclude: set[str] = set()
        for _ in range(self.attempts):
            now = time.time()

            def live(agent_id: str, now: float = now) -> bool:
                return self.state.has_fresh_heartbeat(agent_id, now)

            # Agents this process is claiming on right now are tried last: concurrent
            # decisions spread over the next-best agents instead of all racing for one
            # record (and losing compare-and-sets to each other).
            index = self.state.capacity
            choice = None
            if self._busy:
                choice = index.choose_first(requests, live, self.overcommit,
                                            allow_spot=allow_spot,
                                            exclude=exclude | self._busy.keys())
            if choice is None:
                choice = index.choose_first(requests, live, self.overcommit,
                                            allow_spot=allow_spot, exclude=exclude)
            if choice is None:
                return None
            self._busy[choice.agent_id] = self._busy.get(choice.agent_id, 0) + 1
            try:
                won = await self._claim_on(choice, fn_key, now, allow_spot, shell_call_id)
            finally:
                left = self._busy.pop(choice.agent_id) - 1
                if left:
                    self._busy[choice.agent_id] = left
            if won is not None:
                return won
            # Lost the race (or our view was stale): the view of that agent is fresh now,
            # so the next pick sees what is really left there.
            if choice.agent_id not in self.state.agents:
                exclude.add(choice.agent_id)
        log.warning("claim_gave_up", fn_key=fn_key, attempts=self.attempts)
        return None

    async def _claim_on(
        self, choice: placement.Choice, fn_key: str, now: float, allow_spot: bool,
        shell_call_id: str = "",
    ) -> Claim | None:
        container_id = new_container_id()
        current: list[AgentRecord] = []
        written: list[tuple[AgentRecord, tuple[int, ...]]] = []

        def mutate(raw: bytes | None) -> bytes | None:
            if raw is None:
                current.clear()
                written.clear()
                return None  # the agent is gone
            return build(AgentRecordDecoder.decode(raw))

        def build(record: AgentRecord) -> bytes | None:
            current.clear()
            written.clear()
            current.append(record)
            if not placement.accepts_work(record) or (record.spot and not allow_spot):
                return None
            indices = placement.fit(record, choice.resources, self.overcommit)
            if indices is None:
                return None
            new = placement.with_allocation(
                record, container_id, fn_key, choice.resources, indices, now, shell_call_id
            )
            written.append((new, indices))
            return encode(new)

        # Optimistic first write: our view holds the record at a known revision, so the
        # allocation can be computed from it and written conditional on that revision, in
        # one round trip. If anyone wrote since, the write is refused and the usual
        # read-modify-write loop runs on the fresh record.
        cached = self.state.agents.get(choice.agent_id)
        cached_rev = self.state.revision(choice.agent_id)
        if cached is not None and cached_rev:
            new_value = build(cached)
            if new_value is not None:
                try:
                    revision = await self.kv.update(choice.agent_id, new_value, last=cached_rev)
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
                else:
                    return self._won(choice, container_id, written[0], revision, now)
        try:
            value, revision = await bus.kv_cas(self.kv, choice.agent_id, mutate)
        except RuntimeError as e:  # contended beyond reason: let the caller re-pick
            log.warning("claim_contended", fn_key=fn_key, agent_id=choice.agent_id,
                        error=str(e))
            return None
        if value is None:
            self.state.apply_agent(choice.agent_id, current[0] if current else None, revision)
            log.info("claim_lost", fn_key=fn_key, agent_id=choice.agent_id)
            return None
        return self._won(choice, container_id, written[0], revision, now)

    def _won(self, choice: placement.Choice, container_id: str,
             written: tuple[AgentRecord, tuple[int, ...]], revision: int, now: float) -> Claim:
        record, indices = written
        self.state.apply_agent(choice.agent_id, record, revision)
        return Claim(
            container_id=container_id, agent_id=choice.agent_id, resources=choice.resources,
            gpu_indices=indices, spot=record.spot, placed_at=now, revision=revision,
        )

    async def release(self, agent_id: str, container_id: str) -> None:
        """Remove an allocation this scheduler made but could not hand to the agent."""

        def mutate(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            record = AgentRecordDecoder.decode(raw)
            if container_id not in record.allocations:
                return None
            return encode(placement.without_allocation(record, container_id))

        value, revision = await bus.kv_cas(self.kv, agent_id, mutate)
        if value is not None:
            self.state.apply_agent(agent_id, AgentRecordDecoder.decode(value), revision)
