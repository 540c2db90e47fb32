"""Which attempt of a call runs now, decided by compare-and-set on the call's KV record.

- A first delivery runs attempt 1, as the input says: no read on the hot path.
- A missing record (not stored yet, or expired with the result retention) is written
  from the input, as the gateway writes it (:func:`burst_core.calls.first_record`).
- A redelivery is either a scheduled user retry (the record was bumped with
  ``retry_pending`` when the failure was handled) or a platform fault (lost agent,
  preemption, a stopped container handing its input back): then the attempt is bumped
  here, counted apart from the user's retries, up to ``MAX_INTERNAL_RETRIES``.
- A failed attempt with retries left bumps the record and is redelivered after its
  backoff (``nak`` with a delay): the schedule lives in JetStream, so a crash of any
  service neither loses nor doubles it.

Every bump is announced (``AttemptChanged``) so gateways refuse the old attempt's output.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import bus, calls, logs, names
from burst_core.schemas import (
    AttemptChanged,
    CallRecord,
    CallRecordDecoder,
    Input,
    RetryPolicy,
    encode,
)


class HasBus(Protocol):
    """The NATS connection the call records are read and announced on."""

    nc: NATS
    js: JetStreamContext

log = logs.get("burst.agent.attempts")

MAX_INTERNAL_RETRIES = 8


class GiveUp(Exception):
    """The call exhausted its platform retries."""


class Attempts:
    def __init__(self, agent: HasBus) -> None:
        self.agent = agent
        self._buckets: calls.CallBuckets | None = None

    async def _kv(self, call_id: str) -> KeyValue:
        """The bucket of the call's record (a transient call's is apart, by its id)."""
        if self._buckets is None:
            self._buckets = await calls.CallBuckets.open(self.agent.js)
        return self._buckets.of(call_id)

    async def _answered(self, call_id: str, attempt: int) -> bool:
        try:
            await self.agent.js.get_last_msg(names.outputs_stream(call_id),
                                             names.output_subject(call_id, attempt))
            return True
        except nats.js.errors.NotFoundError:
            return False

    async def resume(self, inp: Input) -> Input | None:
        """The attempt a redelivered input runs now, or None when the call is answered.

        Raises :class:`GiveUp` after too many platform retries.
        """
        kv = await self._kv(inp.call_id)
        for _ in range(20):
            raw, rev = await self._record(kv, inp)
            if raw is None:
                continue
            rec = CallRecordDecoder.decode(raw)
            if await self._answered(rec.call_id, rec.attempt):
                return None
            if rec.retry_pending:
                new = msgspec.structs.replace(rec, retry_pending=False)
                reason = ""
            else:
                if rec.internal_retries >= MAX_INTERNAL_RETRIES:
                    raise GiveUp(f"call {rec.call_id} was interrupted by platform faults "
                                 f"{rec.internal_retries + 1} times; giving up")
                new = msgspec.structs.replace(
                    rec, attempt=rec.attempt + 1, attempt_token=uuid.uuid4().hex,
                    internal_retries=rec.internal_retries + 1)
                reason = "internal"
            try:
                await kv.update(inp.call_id, encode(new), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            if reason:
                await self._announce(new, reason)
                log.info("internal_retry", call_id=new.call_id, attempt=new.attempt,
                         internal_retries=new.internal_retries)
            return msgspec.structs.replace(inp, attempt=new.attempt,
                                           attempt_token=new.attempt_token)
        raise RuntimeError(f"call record {inp.call_id} kept changing under us")

    async def schedule_retry(self, inp: Input, policy: RetryPolicy | None) -> float | None:
        """After attempt ``inp.attempt`` failed: bump the call for a retry and return its
        delay, or None when no retry is left (the failure is the call's result)."""
        if policy is None or policy.max_retries <= 0:
            return None
        kv = await self._kv(inp.call_id)
        for _ in range(20):
            raw, rev = await self._record(kv, inp)
            if raw is None:
                continue
            rec = CallRecordDecoder.decode(raw)
            if rec.attempt != inp.attempt or rec.user_failures >= policy.max_retries:
                return None
            new = msgspec.structs.replace(
                rec, attempt=rec.attempt + 1, attempt_token=uuid.uuid4().hex,
                user_failures=rec.user_failures + 1, retry_pending=True)
            try:
                await kv.update(inp.call_id, encode(new), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            await self._announce(new, "retry")
            delay = policy.delay(new.user_failures)
            log.info("retry_scheduled", call_id=new.call_id, attempt=new.attempt, delay=delay)
            return delay
        return None

    async def _record(self, kv: KeyValue, inp: Input) -> tuple[bytes | None, int]:
        """The call's record and its revision. A missing one is written from the input
        (``None`` then: read it again): the gateway stores a call's record just after its
        input, so an attempt can fail before it lands; and a record past the result
        retention is gone while its input may still be redelivered."""
        raw, rev = await bus.kv_get(kv, inp.call_id)
        if raw is None:
            try:
                await kv.create(inp.call_id, encode(calls.first_record(inp)))
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # the gateway's landed meanwhile
        return raw, rev

    async def _announce(self, rec: CallRecord, reason: str) -> None:
        msg = AttemptChanged(call_id=rec.call_id, attempt=rec.attempt,
                             attempt_token=rec.attempt_token, reason=reason)
        await self.agent.nc.publish(names.attempt_changed_subject(rec.call_id), encode(msg))
