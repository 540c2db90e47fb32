"""Stopping an app, shared by the gateway (``burst app stop``) and the scheduler's client
reaper (an ephemeral run whose client stopped heartbeating).

Stopping removes the deployment record (no new calls; the scheduler stops the app's
containers once idle) and announces ``AppRemoved``. An ephemeral run also loses its
work: every input still in the inputs stream (queued, or running and not yet acked) is
cancelled as ``DELETE /v1/calls/{id}`` would: a ``terminated`` output stored as the
attempt's first (so its caller gets exactly one answer, a cancellation), a
``CallCancelled`` signal (agents stop it if it runs), then the inputs are purged so no
container starts for them. The function's ``burst shell`` sessions (inputs of their own
subject) are cancelled with them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.calls import CallBuckets, first_record
from burst_core.schemas import (
    AppRemoved,
    CallCancelled,
    CallRecordDecoder,
    DeploymentRecord,
    InputDecoder,
    Output,
    OutputStatus,
    encode,
)

log = logs.get("burst.apps")

#: JetStream's answer to a publish whose expected last subject sequence does not hold.
WRONG_LAST_SEQUENCE = 10071


async def stop(js: JetStreamContext, dep: DeploymentRecord, reason: str) -> int:
    """Stop ``dep``; for an ephemeral run, cancel its inputs. Returns calls cancelled."""
    kv = await js.key_value(names.KV_DEPLOYMENTS)
    await kv.delete(names.deployment_key(dep.workspace, dep.app))
    await bus.publish(js, names.app_removed_subject(dep.workspace, dep.app),
                      encode(AppRemoved(workspace=dep.workspace, app=dep.app,
                                        deployment_id=dep.deployment_id)),
                      msg_id=f"{dep.deployment_id}:removed")
    cancelled = 0
    if dep.ephemeral:
        for fn in dep.functions:
            cancelled += await cancel_inputs(
                js, names.function_key(dep.workspace, dep.app, fn.name), reason)
    log.info("app_stopped", workspace=dep.workspace, app=dep.app, name=dep.name or dep.app,
             reason=reason, cancelled=cancelled)
    return cancelled


async def cancel_inputs(js: JetStreamContext, fn_key: str, reason: str,
                        status: OutputStatus = "terminated",
                        error_type: str = "burst.exception.InputCancellation", *,
                        message: str = "", payload: bytes = b"") -> int:
    """Cancel every call whose input of ``fn_key`` is still in the inputs stream, then
    purge those inputs. Returns how many calls were cancelled (answered ones are not).
    ``burst shell`` sessions of the function are cancelled too (their containers stop).

    Each gets ``status`` (a cancellation by default; a spent hard budget answers
    ``failure`` with ``burst.exception.BudgetExceededError``), and ``message`` and
    ``payload`` (the pickled exception) when given."""
    answer = _Answer(status, error_type, message, payload, reason)
    n, seq = await _cancel_scan(js, fn_key, names.input_subject(fn_key), answer)
    if seq:
        # Only what was seen: an input published after the scan (it cannot be, once the
        # record is gone and every gateway knows, but a cache may lag) keeps its place.
        await js.purge_stream(names.STREAM_INPUTS, subject=names.input_subject(fn_key),
                              seq=seq + 1)
    shells, _ = await _cancel_scan(js, fn_key, names.shell_input_subject("*"), answer)
    return n + shells


@dataclass(frozen=True)
class _Answer:
    status: OutputStatus
    error_type: str
    message: str
    payload: bytes
    reason: str


async def _cancel_scan(js: JetStreamContext, fn_key: str, subject: str,
                       answer: _Answer) -> tuple[int, int]:
    """Answer the calls of ``fn_key`` whose inputs match ``subject``: (calls cancelled,
    the last sequence seen). A shell session's input is purged at once (its own subject);
    one its container holds is then cancelled there (the container stops)."""
    buckets = await CallBuckets.open(js)
    nc = bus.client_of(js)
    ws, app, function = names.split_function_key(fn_key)
    seq, n = 0, 0
    while True:
        try:
            raw = await js.get_msg(names.STREAM_INPUTS, seq=seq + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        assert raw.seq is not None and raw.data is not None
        seq = raw.seq
        try:
            inp = InputDecoder.decode(raw.data)
        except Exception:
            continue
        if (inp.workspace, inp.app, inp.function) != (ws, app, function):
            continue  # another function's shell session
        rec_raw, _ = await bus.kv_get(buckets.of(inp.call_id), inp.call_id)
        rec = CallRecordDecoder.decode(rec_raw) if rec_raw is not None else first_record(inp)
        out = Output(call_id=rec.call_id, input_id=rec.input_id, attempt=rec.attempt,
                     attempt_token=rec.attempt_token, status=answer.status,
                     error_type=answer.error_type, payload=answer.payload,
                     error_message=answer.message
                     or f"call {rec.call_id} was cancelled: {answer.reason}",
                     finished_at=time.time(), workspace=rec.workspace)
        try:
            await bus.publish(js, names.output_subject(rec.call_id, rec.attempt), encode(out),
                              msg_id=f"{rec.input_id}:{rec.attempt}",
                              headers={"Nats-Expected-Last-Subject-Sequence": "0"})
            answered = False
        except nats.js.errors.APIError as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                raise
            answered = True
        if inp.payload_format == names.SHELL_FORMAT:  # no container starts for it now
            await js.purge_stream(names.STREAM_INPUTS,
                                  subject=names.shell_input_subject(inp.call_id))
        if answered:
            continue  # it had answered already
        await nc.publish(names.call_cancelled_subject(fn_key),
                         encode(CallCancelled(call_id=rec.call_id, fn_key=fn_key,
                                              at=time.time())))
        n += 1
    return n, seq
