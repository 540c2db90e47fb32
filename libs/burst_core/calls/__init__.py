"""Creating a call: its record (KV ``burst_calls``), its input (``INPUTS``) and the
``input.accepted`` signal. Shared by :class:`burst_core.calls.caller.Caller` (users'
calls, from clients or from containers) and the scheduler (scheduled ticks), so a call is
the same whoever makes it.

A call id is ``fc-`` + 12 hex digits of milliseconds since the epoch + 20 hex digits:
random for a user's call, derived from the tick's identity for a scheduled one, so firing
the same tick twice names the same call (:func:`create_once`). The tail of a transient
call's id (and only of one) starts with ``names.TRANSIENT_TAIL``: its record and output
live in the transient bucket and stream (:class:`CallBuckets`, ``names.outputs_stream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst.exception import InvalidError
from burst_core import bus, names, tracing
from burst_core.schemas import CallRecord, CallRecordDecoder, Input, InputAccepted, encode


def _tail(tail: str, transient: bool) -> str:
    """``tail`` (20 hex digits) marked transient, or made sure it is not taken for one."""
    mark = names.TRANSIENT_TAIL
    if transient:
        return mark + tail[len(mark):]
    return ("0" + tail[1:]) if tail.startswith(mark) else tail


def new_call_id(now: float, key: str | None = None, tail: str | None = None,
                transient: bool = False) -> str:
    """A new call id; with ``key`` the 20 trailing digits are a hash of it (deterministic),
    with ``tail`` they are those given (20 random hex digits), else random. A
    ``transient`` call's tail starts with ``names.TRANSIENT_TAIL``; no other's does."""
    if key:
        tail = hashlib.sha256(key.encode()).hexdigest()[:20]
    return f"fc-{int(now * 1000):012x}{_tail(tail or uuid.uuid4().hex[:20], transient)}"


SUBMISSION_ID = re.compile(r"^[0-9a-f]{32}$")
#: Seconds a submission id's time may be off the gateway's clock.
SUBMISSION_SKEW = 86400.0


def check_submission_id(sid: str, now: float) -> str:
    """``sid`` if it is a submission id (12 hex digits of its time in ms, 20 random hex
    digits) made within a day of ``now``; else InvalidError naming it."""
    if not SUBMISSION_ID.match(sid):
        raise InvalidError(f"invalid submission_id {sid[:80]!r}: use 32 lowercase hex digits "
                           "(12 of the time in ms, 20 random)")
    at = int(sid[:12], 16) / 1000
    if abs(at - now) > SUBMISSION_SKEW:
        raise InvalidError(f"submission_id {sid!r} was made {at - now:+.0f} s from the "
                           "gateway's clock (at most a day either way): check the client's clock")
    return sid


def submission_call(workspace: str, submission: str,
                    transient: bool = False) -> tuple[str, str]:
    """The call id and attempt token of a submission (``<id>`` or ``<id>.<i>`` for the
    i-th call of a batch): the id's time, then a digest of the workspace and it (marked
    ``transient`` or not, see :func:`new_call_id`)."""
    digest = hashlib.sha256(f"{workspace}\0{submission}".encode()).hexdigest()
    return f"fc-{submission[:12]}{_tail(digest[:20], transient)}", digest[20:52]


def call_created_at(call_id: str) -> float:
    try:
        return int(call_id[3:15], 16) / 1000
    except ValueError:
        return 0.0


def build(workspace: str, app: str, function: str, deployment_id: str, payload: bytes,
          payload_format: str, now: float, call_id: str | None = None,
          payload_ref: str = "", parent_call_id: str = "",
          lineage: list[str] | None = None, submission: str = "",
          transient: bool = False) -> tuple[CallRecord, Input]:
    """A call's first-attempt record and input (nothing is written); a ``transient``
    call's id says so (see :func:`new_call_id`). With
    ``submission`` (a checked submission id, see :func:`submission_call`) the call id and
    the attempt token follow from the workspace and it, so a resubmission through another
    gateway publishes the same input under the same ``Nats-Msg-Id``, which JetStream drops."""
    if submission:
        derived, token = submission_call(workspace, submission, transient)
        cid = call_id or derived
    else:
        rand = os.urandom(26).hex()  # one read for the call id's tail and the token
        cid = call_id or new_call_id(now, tail=rand[:20], transient=transient)
        token = rand[20:]
    # The input id follows from the call id: resubmitting a call (an idempotent retry
    # after a crash) republishes the same input, which JetStream then drops.
    input_id = "in-" + cid[3:]
    inp = Input(workspace=workspace, app=app, function=function, call_id=cid,
                input_id=input_id, attempt=1, attempt_token=token, payload=payload,
                accepted_at=now, deployment_id=deployment_id, payload_format=payload_format,
                payload_ref=payload_ref, parent_call_id=parent_call_id,
                lineage=lineage or [])
    return first_record(inp), inp


class CallBuckets:
    """The two call-record buckets: ``burst_calls`` (kept ``BURST_RESULT_RETENTION``) and
    ``burst_calls_transient`` (kept ``BURST_TRANSIENT_RESULT_RETENTION``); :meth:`of`
    picks a call's by its id. Entries that are not a call's record (a parent's list of
    children) live in :attr:`full`."""

    __slots__ = ("full", "transient")

    def __init__(self, full: KeyValue, transient: KeyValue) -> None:
        self.full, self.transient = full, transient

    @classmethod
    async def open(cls, js: JetStreamContext) -> CallBuckets:
        return cls(await js.key_value(names.KV_CALLS),
                   await js.key_value(names.KV_CALLS_TRANSIENT))

    def of(self, call_id: str) -> KeyValue:
        return self.transient if names.is_transient_call(call_id) else self.full


def first_record(inp: Input) -> CallRecord:
    """The record of a call's first attempt, as its input (the one stored; redeliveries
    carry it unchanged) describes it: what the gateway writes, and what an agent writes
    when it finds no record (see :func:`create_many`)."""
    return CallRecord(call_id=inp.call_id, workspace=inp.workspace, app=inp.app,
                      function=inp.function, input_id=inp.input_id, attempt=1,
                      attempt_token=inp.attempt_token, created_at=inp.accepted_at,
                      deployment_id=inp.deployment_id, parent_call_id=inp.parent_call_id)


async def create_record(calls_kv: KeyValue, rec: CallRecord,
                        resubmitted: bool = False) -> None:
    """Create a call's first-attempt record unless it exists: a record of the same call
    (same input, same acceptance time) is this one, stored by a publish whose ack was lost
    or by an agent that needed it first; any other raises ``KeyWrongLastSequenceError``
    (a racing resubmission under the same idempotency key made the call). Tried again
    through a NATS leader election (a create whose ack was lost finds itself stored)."""
    await bus.retrying(lambda: _create_record_once(calls_kv, rec, resubmitted))


async def _create_record_once(calls_kv: KeyValue, rec: CallRecord, resubmitted: bool) -> None:
    try:
        await calls_kv.create(rec.call_id, encode(rec))
    except nats.js.errors.KeyWrongLastSequenceError:
        raw, _ = await bus.kv_get(calls_kv, rec.call_id)
        old = CallRecordDecoder.decode(raw) if raw is not None else None
        if old is None or old.input_id != rec.input_id:
            raise
        # (a resubmission by submission id, through another gateway, accepted the same
        # call at another time: its input id alone says it is this call)
        if old.created_at != rec.created_at and not resubmitted:
            raise


async def signal(nc: NATS, fn_key: str, call_id: str, now: float) -> None:
    """A payload-free hint for the scheduler; losing it costs a reconcile tick, no more."""
    await nc.publish(names.input_accepted_subject(fn_key),
                     encode(InputAccepted(fn_key=fn_key, call_id=call_id, at=now)),
                     headers=tracing.outgoing.get())


class Signals:
    """``input.accepted`` signals of one process, at most one per function per ``interval``.

    A signal is stored in the control stream and handled by the scheduler (a pull, a
    decision, an ack): per call, that cost more CPU than the rest of a warm call's path in
    the scheduler and nats-server together. A signal only says "this function has work";
    the scheduler counts containers and backlog itself. So the first call of a function
    signals at once, calls within ``interval`` after it share one trailing signal sent when
    the interval ends (naming the latest of them), and the next call after that signals at
    once again. ``interval`` 0 sends one per call. With ``answered`` (whether a call's
    output has arrived), a trailing signal whose call is answered by then is not sent: the
    function's containers keep up, and a scheduler told of work already done may place a
    container nobody needs.
    """

    def __init__(self, nc: NATS, interval: float,
                 answered: Callable[[str], bool] | None = None) -> None:
        self.nc = nc
        self.interval = interval
        self.answered = answered
        self.sent = 0
        self.skipped = 0
        self._last: dict[str, float] = {}  # fn_key -> loop time of its last signal
        self._trailing: dict[str, tuple[str, float, asyncio.TimerHandle]] = {}

    async def accepted(self, fn_key: str, call_id: str, now: float) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        last = self._last.get(fn_key)
        if self.interval <= 0 or last is None or t - last >= self.interval:
            if fn_key in self._trailing:  # its timer is late: this signal covers it
                self._trailing.pop(fn_key)[2].cancel()
            self._last[fn_key] = t
            self.sent += 1
            await signal(self.nc, fn_key, call_id, now)
            return
        pending = self._trailing.get(fn_key)
        timer = pending[2] if pending else loop.call_at(last + self.interval, self._fire, fn_key)
        self._trailing[fn_key] = (call_id, now, timer)

    def _fire(self, fn_key: str) -> None:
        pending = self._trailing.pop(fn_key, None)
        if pending is None:
            return
        self._last[fn_key] = asyncio.get_running_loop().time()
        if self.answered is not None and self.answered(pending[0]):
            self.skipped += 1
            return
        self.sent += 1
        asyncio.ensure_future(self._send(fn_key, pending[0], pending[1]))

    async def _send(self, fn_key: str, call_id: str, now: float) -> None:
        with contextlib.suppress(Exception):  # a lost hint costs a reconcile tick
            await signal(self.nc, fn_key, call_id, now)

    async def flush(self) -> None:
        """Send the trailing signals now (before the connection closes)."""
        for fn_key, (call_id, now, timer) in list(self._trailing.items()):
            timer.cancel()
            del self._trailing[fn_key]
            await self._send(fn_key, call_id, now)


async def create_once(js: JetStreamContext, nc: NATS, calls_kv: KeyValue,
                      rec: CallRecord, inp: Input, dedupe_window: float) -> bool:
    """Create a call whose id is deterministic; True if this made it, False if it existed.

    The record is created first (create-only: of two racing creators one wins), then the
    input is published with its id as ``Nats-Msg-Id``. A creator that died between the
    two left a record without an input: a record found younger than the inputs stream's
    dedupe window gets its input republished (dropped by JetStream if it was stored); an
    older one is taken as delivered, never run twice.
    """
    try:
        await calls_kv.create(rec.call_id, encode(rec))
        made = True
    except nats.js.errors.KeyWrongLastSequenceError:
        raw, _ = await bus.kv_get(calls_kv, rec.call_id)
        if raw is None:
            return False
        old = CallRecordDecoder.decode(raw)
        if time.time() - old.created_at > dedupe_window:
            return False
        inp = Input(workspace=inp.workspace, app=inp.app, function=inp.function,
                    call_id=old.call_id, input_id=old.input_id, attempt=1,
                    attempt_token=old.attempt_token if old.attempt == 1 else inp.attempt_token,
                    payload=inp.payload, accepted_at=old.created_at,
                    deployment_id=inp.deployment_id, payload_format=inp.payload_format)
        made = False
    fn_key = names.function_key(rec.workspace, rec.app, rec.function)
    await bus.publish(js, names.input_subject(fn_key), encode(inp), msg_id=inp.input_id)
    await signal(nc, fn_key, rec.call_id, inp.accepted_at)
    return made


async def create_shell(js: JetStreamContext, calls_kv: KeyValue, rec: CallRecord,
                       inp: Input) -> None:
    """A ``burst shell`` session: its record, its input on a subject of its own (only the
    container placed for it reads it), and a stored signal asking the scheduler for that
    new container (stored, not a hint: no reconcile pass would find the session)."""
    await create_record(calls_kv, rec)
    await bus.publish(js, names.shell_input_subject(rec.call_id), encode(inp),
                      msg_id=inp.input_id)
    fn_key = names.function_key(rec.workspace, rec.app, rec.function)
    await bus.publish(js, names.input_accepted_subject(fn_key),
                      encode(InputAccepted(fn_key=fn_key, call_id=rec.call_id,
                                           at=inp.accepted_at, shell=True)),
                      msg_id=f"shell-{rec.call_id}")


async def create_many(js: JetStreamContext, nc: NATS, calls_kv: KeyValue | CallBuckets,
                      fn_key: str,
                      calls: list[tuple[CallRecord, Input]],
                      signals: Signals | None = None, records: bool = True,
                      resubmitted: bool = False) -> set[str]:
    """Create calls of one function: one signal (through ``signals``, which may hold it
    back for a trailing one), all inputs and records go out at once (their acks awaited
    together).

    The inputs go first: nats-server handles a connection's messages in order, and a warm
    call's latency runs through its input, not its record (about 4% of a warm call,
    measured). A first attempt never reads its record; only retries, cancellation and late
    lookups do. Should an agent need one before it is stored (a failure with retries
    left, within a millisecond), it writes the same record from the input
    (:func:`first_record`), and this create finds it as its own.

    With ``records`` False only the inputs go out: the gateway's synchronous calls
    create their record only when the caller is answered without the result (see
    ``burst_core.calls.caller.Caller.call_once``).

    An input without an ack is republished under its msg id (JetStream drops it if it
    was stored); a record without one is created again (:func:`create_record`). With
    :class:`CallBuckets` each record goes to its call's bucket."""
    def kv(call_id: str) -> KeyValue:
        return calls_kv.of(call_id) if isinstance(calls_kv, CallBuckets) else calls_kv

    subject = names.input_subject(fn_key)
    create_only = {"Nats-Expected-Last-Subject-Sequence": "0"}
    traced = tracing.outgoing.get()  # a traced call's context goes with its input
    msgs = [(subject, encode(inp), {"Nats-Msg-Id": inp.input_id, **(traced or {})})
            for _, inp in calls]
    if records:
        msgs += [(bus.kv_subject(kv(rec.call_id), rec.call_id), encode(rec), create_only)
                 for rec, _ in calls]
    # The signal goes out in the same write as the records and inputs (it carries no
    # data: a scheduler acting on it before they are stored finds them stored by the time
    # a container pulls).
    last_rec, last_inp = calls[-1]
    if signals is None:
        await signal(nc, fn_key, last_rec.call_id, last_inp.accepted_at)
    else:
        await signals.accepted(fn_key, last_rec.call_id, last_inp.accepted_at)
    results = await bus.publish_many(js, msgs)
    n = len(calls)
    duplicates: set[str] = set()
    for (_, inp), res in zip(calls, results[:n], strict=True):
        if isinstance(res, BaseException):
            res = await bus.publish(js, subject, encode(inp), msg_id=inp.input_id,
                                    headers=traced)
        if getattr(res, "duplicate", False):
            duplicates.add(inp.call_id)
    for (rec, _), res in zip(calls if records else [], results[n:], strict=True):
        if isinstance(res, BaseException):
            await create_record(kv(rec.call_id), rec, resubmitted)
    return duplicates  # the calls whose input was stored before (a resubmission)
