"""Creating a call: its record (KV ``burst_calls``), its input (``INPUTS``) and the
``input.accepted`` signal. Shared by the gateway (users' calls) and the scheduler
(scheduled ticks), so a call is the same whoever makes it.

A call id is ``fc-`` + 12 hex digits of milliseconds since the epoch + 20 hex digits:
random for a user's call, derived from the tick's identity for a scheduled one, so firing
the same tick twice names the same call (:func:`create_once`).
"""

from __future__ import annotations

import hashlib
import time
import uuid

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core import bus, names
from burst_core.schemas import CallRecord, CallRecordDecoder, Input, InputAccepted, encode


def new_call_id(now: float, key: str | None = None) -> str:
    """A new call id; with ``key`` the 20 trailing digits are a hash of it (deterministic)."""
    tail = hashlib.sha256(key.encode()).hexdigest()[:20] if key else uuid.uuid4().hex[:20]
    return f"fc-{int(now * 1000):012x}{tail}"


def call_created_at(call_id: str) -> float:
    try:
        return int(call_id[3:15], 16) / 1000
    except ValueError:
        return 0.0


def build(workspace: str, app: str, function: str, deployment_id: str, payload: bytes,
          payload_format: str, now: float, call_id: str | None = None,
          payload_ref: str = "") -> tuple[CallRecord, Input]:
    """A call's first-attempt record and input (nothing is written)."""
    cid = call_id or new_call_id(now)
    # The input id follows from the call id: resubmitting a call (an idempotent retry
    # after a crash) republishes the same input, which JetStream then drops.
    input_id, token = "in-" + cid[3:], uuid.uuid4().hex
    rec = CallRecord(call_id=cid, workspace=workspace, app=app, function=function,
                     input_id=input_id, attempt=1, attempt_token=token, created_at=now,
                     deployment_id=deployment_id)
    inp = Input(workspace=workspace, app=app, function=function, call_id=cid,
                input_id=input_id, attempt=1, attempt_token=token, payload=payload,
                accepted_at=now, deployment_id=deployment_id, payload_format=payload_format,
                payload_ref=payload_ref)
    return rec, inp


async def signal(nc: NATS, fn_key: str, call_id: str, now: float) -> None:
    """A payload-free hint for the scheduler; losing it costs a reconcile tick, no more."""
    await nc.publish(names.input_accepted_subject(fn_key),
                     encode(InputAccepted(fn_key=fn_key, call_id=call_id, at=now)))


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


async def create_many(js: JetStreamContext, nc: NATS, calls_kv: KeyValue, fn_key: str,
                      calls: list[tuple[CallRecord, Input]]) -> None:
    """Create calls of one function: one signal, all records and inputs go out at once
    (their acks awaited together). A first attempt never reads its record; only
    retries, cancellation and late lookups do, well after this.

    A record that could not be created as new goes through ``KeyValue.create`` again (it
    raises ``KeyWrongLastSequenceError`` for a call that exists); an input without an ack
    is republished under its msg id (JetStream drops it if it was stored)."""
    subject = names.input_subject(fn_key)
    create_only = {"Nats-Expected-Last-Subject-Sequence": "0"}
    msgs = [(f"{calls_kv._pre}{rec.call_id}", encode(rec), create_only) for rec, _ in calls]
    msgs += [(subject, encode(inp), {"Nats-Msg-Id": inp.input_id}) for _, inp in calls]
    # The signal goes out in the same write as the records and inputs (it carries no
    # data: a scheduler acting on it before they are stored finds them stored by the time
    # a container pulls).
    await signal(nc, fn_key, calls[-1][0].call_id, calls[-1][1].accepted_at)
    results = await bus.publish_many(js, msgs)
    n = len(calls)
    for (rec, _), res in zip(calls, results[:n], strict=True):
        if isinstance(res, BaseException):
            await calls_kv.create(rec.call_id, encode(rec))
    for (_, inp), res in zip(calls, results[n:], strict=True):
        if isinstance(res, BaseException):
            await bus.publish(js, subject, encode(inp), msg_id=inp.input_id)
