"""A container's metering records: one per interval, numbered, carrying the span and the
calls whose output the container stored since the last record that went out.

Invariant: a record that fails to publish loses nothing; its span and counts ride on the
next one (the interval number is only spent once a record is out).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from nats.js import JetStreamContext

from burst_core import bus, names
from burst_core.schemas import MeteringRecord, Placement, encode

#: Outcomes a metering record counts as failed calls (``terminated``, a cancellation, is
#: not a failure of the function).
FAILED = frozenset({"failure", "timeout", "internal"})


class Host(Protocol):
    """The agent the records are published for."""

    agent_id: str
    js: JetStreamContext


class Meter:
    def __init__(self, host: Host, placement: Placement, log: Any) -> None:
        self.host, self.placement, self.log = host, placement, log
        #: Calls whose output was stored since the last record that went out, by outcome.
        self.succeeded = 0
        self.failed = 0
        #: The interval under way and when it began.
        self.interval, self.interval_start = 0, 0.0

    def begin(self, at: float) -> None:
        """The container started: its first interval begins ``at``."""
        self.interval, self.interval_start = 0, at

    def count(self, status: str) -> None:
        """An output this container stored (a duplicate is not counted)."""
        if status == "success":
            self.succeeded += 1
        elif status in FAILED:
            self.failed += 1

    @property
    def has_counts(self) -> bool:
        return bool(self.succeeded or self.failed)

    async def publish(self, final: bool) -> None:
        p = self.placement
        now = time.time()
        rec = MeteringRecord(
            container_id=p.container_id, interval=self.interval,
            start=self.interval_start or now, end=now,
            # A run of app X is billed (and budgeted) as X; its id rides along.
            workspace=p.workspace, app=p.app_name or p.app, function=p.function.name,
            agent_id=self.host.agent_id, resources=p.resources, spot=p.spot, final=final,
            succeeded=self.succeeded, failed=self.failed, app_id=p.app if p.app_name else "",
        )
        try:
            await bus.publish(self.host.js,
                              names.metering_subject(p.workspace, self.host.agent_id),
                              encode(rec), msg_id=f"{p.container_id}:{self.interval}")
        except Exception as e:  # kept for the next record: the span and counts are not lost
            self.log.warning("metering_publish_failed", error=repr(e))
            return
        self.interval += 1
        self.interval_start = now
        # Less what the record carried, not zeroed: outputs stored while it was being
        # published belong to the next one.
        self.succeeded -= rec.succeeded
        self.failed -= rec.failed
