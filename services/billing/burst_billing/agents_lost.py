"""Agents lost: the scheduler's ``AgentLost`` events, carried into the metering stream.

The ledger is a fold of ``BURST_METERING`` alone (so a replay from sequence 1 rebuilds it),
but the scheduler announces a lost agent on the control stream, kept a day. Every billing
replica shares a durable consumer that republishes each ``AgentLost`` into the metering
stream (``Nats-Msg-Id`` from the agent and its last heartbeat), where the writer folds it
in order with the records: it closes the agent's open containers at the last heartbeat
and records the lost span (:func:`burst_core.ledger.apply_lost`). A repeat (redelivered
past the dedupe window) changes nothing: the fold remembers the losses it applied.
"""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.schemas import AgentLostDecoder

log = logs.get("burst.billing.agents_lost")


class AgentLostRelay:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._consumer = bus.Consumer(
            js, names.STREAM_CONTROL, names.CONSUMER_BILLING_EVENTS, self.handle,
            filter_subjects=[names.SUBJECTS_AGENT_LOST], ack_wait=30.0, name="agent_lost",
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def handle(self, msg: Msg) -> None:
        try:
            lost = AgentLostDecoder.decode(msg.data)
        except msgspec.DecodeError as e:
            raise bus.Reject(f"undecodable AgentLost: {e}") from e
        await bus.publish(self.js, names.metering_lost_subject(lost.agent_id), msg.data,
                          msg_id=f"lost-{lost.agent_id}-{lost.last_heartbeat_at!r}")
        log.info("agent_lost_relayed", agent_id=lost.agent_id,
                 containers=len(lost.container_ids))
