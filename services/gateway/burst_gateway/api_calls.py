"""Calling functions: create calls (one or a page of a map), wait for outputs, fetch by id."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from typing import Any

import msgspec
import nats.js.errors
import structlog
from fastapi import APIRouter, Depends, Query, Request, Response

from burst.exception import (
    IdempotencyKeyReusedError,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
)
from burst.wire import (
    INLINE_PAYLOAD_LIMIT,
    MSGPACK,
    CallBatchRequest,
    CallBatchResponse,
    CallItemsResponse,
    CallRef,
    CallRequest,
    CallResponse,
    CallWaitRequest,
    CallWaitResponse,
)
from burst_core import bus, logs, names
from burst_core import calls as call_store
from burst_core.calls import call_created_at, new_call_id
from burst_core.schemas import (
    CallCancelled,
    CallRecord,
    CallRecordDecoder,
    DeploymentRecord,
    Output,
    OutputItem,
    OutputItemDecoder,
    encode,
)
from burst_gateway import budgets
from burst_gateway.api_blobs import blob_exists, check_ref, read_blob, store_blob
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import JSON, TOO_DEEP
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()
log = logs.get("burst.gateway.calls")
_call_decoder = msgspec.msgpack.Decoder(CallRequest)
_batch_decoder = msgspec.msgpack.Decoder(CallBatchRequest)
_wait_decoder = msgspec.msgpack.Decoder(CallWaitRequest)
_MSGPACK_BODY = {"requestBody": {"content": {MSGPACK: {}}, "required": True}}
#: Most calls one batch request may create, and most calls one wait request may name.
MAX_BATCH = 1000
WRONG_LAST_SEQUENCE = 10071
#: A waited-on call older than this (s) is also looked up in the stream, at most this many
#: per wait request, in case its output left this gateway's in-memory window.
STREAM_CHECK_AGE = 30.0
STREAM_CHECKS_PER_WAIT = 100
#: Highest items cursor (a stream sequence: NATS takes 64 bits, and reads from the next).
MAX_CURSOR = (1 << 64) - 2


def _response(resp: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.msgpack.encode(resp), status_code=status, media_type=MSGPACK)


def _from_output(out: Output) -> CallResponse:
    return CallResponse(
        call_id=out.call_id, status=out.status, payload=out.payload, error_type=out.error_type,
        error_message=out.error_message, traceback=out.traceback, log_lines=out.log_lines,
        attempt=out.attempt,
        payload_format=out.payload_format, payload_ref=out.payload_ref,
    )


async def _body(request: Request, gw: Gateway, decoder: msgspec.msgpack.Decoder[Any],
                what: str) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != MSGPACK:
        raise InvalidError(f"unsupported content type {ctype or 'none'!r}: send {MSGPACK}")
    return decode_body(gw, await request.body(), decoder, what)


def decode_body(gw: Gateway, body: bytes, decoder: msgspec.msgpack.Decoder[Any], what: str) -> Any:
    """A msgpack request body within the size limit, decoded (or the error naming why not)."""
    if len(body) > gw.settings.max_body_bytes:
        raise PayloadTooLargeError(
            f"request of {len(body)} bytes exceeds the {gw.settings.max_body_bytes} byte limit")
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed {what}: {e}") from None
    except RecursionError:  # (an unknown field's value is skipped by recursion)
        raise InvalidError(TOO_DEEP) from None


async def _function(gw: Gateway, p: Principal, app: str, fn: str) -> DeploymentRecord:
    dep: DeploymentRecord | None = await gw.deployment(p.workspace, app)
    if dep is None:
        raise NotFoundError(f"app {app!r} is not deployed in workspace {p.workspace!r}")
    if not any(f.name == fn for f in dep.functions):
        known = ", ".join(f.name for f in dep.functions)
        raise NotFoundError(f"app {app!r} has no function {fn!r} (it has: {known})")
    return dep


async def submit(gw: Gateway, p: Principal, dep: DeploymentRecord, fn: str,
                 payloads: list[bytes], register: bool, payload_format: str = "pickle",
                 call_id: str | None = None, refs: list[str] | None = None,
                 records: bool = True) -> list[tuple[CallRecord, Any]]:
    """Create one call per payload: its input (JetStream) and, with ``records``, its
    record (KV); answers each call's record and output future.

    With ``register`` the output futures exist before any input is published, so no
    output can be missed. All KV writes and publishes go out concurrently.
    """
    # 402 while a hard budget is spent (a run of app X is covered by X's budgets)
    await budgets.check(gw, p.workspace, dep.name or dep.app, fn)
    fn_key = names.function_key(p.workspace, dep.app, fn)
    now = time.time()
    refs = refs or [""] * len(payloads)
    if len(refs) != len(payloads):
        raise InvalidError(f"{len(refs)} payload references for {len(payloads)} payloads")
    for ref in set(refs) - {""}:
        check_ref(ref)
        if not await blob_exists(gw, p.workspace, ref):  # another workspace's does not count
            raise InvalidError(f"blob {ref} is not stored in workspace {p.workspace!r}: "
                               "upload it first (PUT /v1/blobs/{ref})")
    for i, payload in enumerate(payloads):
        if len(payload) > INLINE_PAYLOAD_LIMIT:  # too big for a NATS message: a blob
            refs[i] = await store_blob(gw, p.workspace, payload)
            payloads[i] = b""
    calls = [call_store.build(p.workspace, dep.app, fn, dep.deployment_id, payload,
                              payload_format, now, call_id=call_id, payload_ref=ref)
             for payload, ref in zip(payloads, refs, strict=True)]
    futs = [gw.outputs.register(rec.call_id, rec.attempt_token) if register else None
            for rec, _ in calls]
    await call_store.create_many(gw.js, gw.nc, gw.calls_kv, fn_key, calls, gw.signals,
                                 records=records)
    return [(rec, fut) for (rec, _), fut in zip(calls, futs, strict=True)]


def _ref(rec: CallRecord) -> CallRef:
    return CallRef(call_id=rec.call_id, attempt_token=rec.attempt_token)


async def _record(gw: Gateway, call_id: str, workspace: str) -> CallRecord | None:
    """The call's record, if the call exists and belongs to ``workspace``.

    A call answered within its synchronous wait has no record (see :func:`call_once`)
    unless a retry made one: its one attempt's output stands in for it.
    """
    if not _valid_call_id(call_id):
        return None
    raw, _ = await bus.kv_get(gw.calls_kv, call_id)
    if raw is None:
        out = gw.outputs.recent(call_id) or await gw.outputs.fetch(call_id, 1)
        if out is None or out.attempt != 1 or out.workspace != workspace:
            return None
        return CallRecord(call_id=call_id, workspace=workspace, app="", function="",
                          input_id=out.input_id, attempt=1, attempt_token=out.attempt_token,
                          created_at=call_created_at(call_id))
    rec = CallRecordDecoder.decode(raw)
    return rec if rec.workspace == workspace else None


async def wait_many(gw: Gateway, workspace: str, refs: list[CallRef], wait: float,
                    linger: float = 0.0) -> list[CallResponse]:
    """The finished calls among ``refs``: at once if any is, else the first to finish.

    A ref's attempt token is the caller's proof it made the call; when it no longer
    matches (a retry moved the call on) the call's record, in the caller's workspace, says
    which attempt is current, and outputs of any other attempt are refused. Outputs of
    another workspace's calls are never answered, whatever the token.
    """
    done: list[CallResponse] = []
    pending: list[CallRef] = []
    for ref in refs:
        out = gw.outputs.recent(ref.call_id)
        if out is not None and out.workspace != workspace:
            continue  # another workspace's call: not even a token shown to it counts
        if out is not None and out.attempt_token != ref.attempt_token:
            rec = await _record(gw, ref.call_id, workspace)
            if rec is None:
                continue
            ref.attempt_token = rec.attempt_token
        if out is not None and out.attempt_token == ref.attempt_token:
            done.append(_from_output(out))
        else:
            pending.append(ref)
    if done or not pending or wait <= 0:
        return done
    group = gw.outputs.register_group({r.call_id: r.attempt_token for r in pending})
    try:
        # Outputs this gateway cannot have seen (the call is older than the gateway), did
        # not keep (too big), or may have dropped from memory since (old calls, checked
        # a bounded number per request): look them up in the stream.
        now, deep = time.time(), 0
        for r in pending:
            created = call_created_at(r.call_id)
            old = now - created > STREAM_CHECK_AGE and deep < STREAM_CHECKS_PER_WAIT
            deep += old
            if created < gw.started_at + 1.0 or old or gw.outputs.seen_big(r.call_id):
                rec = await _record(gw, r.call_id, workspace)
                out = await gw.outputs.fetch(r.call_id, rec.attempt) if rec else None
                if out is not None and rec is not None and out.attempt_token == rec.attempt_token:
                    done.append(_from_output(out))
        if done:
            return done
        # Until the first output, then up to ``linger`` more for others (or all of them).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        lingering = False
        while len(group.outputs) < len(pending):
            if group.unsure:
                await _settle_unsure(gw, group, workspace)
                continue
            if group.outputs and not lingering:
                if linger <= 0:
                    break
                lingering, deadline = True, min(deadline, loop.time() + linger)
            left = deadline - loop.time()
            if left <= 0:
                break
            group.event.clear()
            try:
                await asyncio.wait_for(group.event.wait(), left)
            except TimeoutError:
                break
        return [_from_output(o) for o in group.outputs.values() if o.workspace == workspace]
    finally:
        gw.outputs.unregister_group(group)


async def _settle_unsure(gw: Gateway, group: Any, workspace: str) -> None:
    """Outputs of an attempt the waiter did not name: one counts if the call's record
    says its attempt is the current one (a retry moved the call on before the wait
    began, so the waiter named an older attempt); the others are stale."""
    unsure, group.unsure = group.unsure, {}
    for call_id, out in unsure.items():
        rec = await _record(gw, call_id, workspace)
        if rec is not None and rec.attempt_token == out.attempt_token:
            group.tokens[call_id] = out.attempt_token
            group.outputs[call_id] = out


def _give_up(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait_one(gw: Gateway, call_id: str, fut: asyncio.Future[Output],
                    wait: float) -> CallResponse:
    # The registered future itself, with a timer that answers None: its result wakes
    # this task at once (``wait_for(shield(...))`` passes it on through two more
    # callbacks, each a turn of the event loop on every call's way back).
    out: Output | None = None
    timer = asyncio.get_running_loop().call_later(wait, _give_up, fut) if wait > 0 else None
    try:
        out = await fut if wait > 0 else None
    finally:
        if timer is not None:
            timer.cancel()
        gw.outputs.unregister(call_id, fut)
    if out is None:
        return CallResponse(call_id=call_id, status="pending")
    return _from_output(out)


_JSON_OR_MSGPACK = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "args": {"type": "array"}, "kwargs": {"type": "object"}}}},
    MSGPACK: {}}}}


#: Standard JSON has no NaN or infinities. A result (or item) that holds them, as Python's
#: ``json`` writes them, is answered with each as the string "NaN", "Infinity" or
#: "-Infinity" (the convention of protobuf's JSON mapping; see the README). The SDK's own
#: msgpack answers carry the value unchanged.
_NONFINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


#: Deepest nesting (arrays and objects within each other) of a JSON result or item the API
#: answers with: Python's JSON reader and writer stop near 1,000 levels, less the stack
#: below them. A deeper one is answered as null, with a ``result_error`` saying why.
MAX_RESULT_DEPTH = 500
RESULT_TOO_DEEP = (f"the result is nested more than {MAX_RESULT_DEPTH} levels deep (arrays "
                   "and objects within each other), more than a JSON answer carries")


class ResultTooDeep(Exception):
    pass


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` deep (no recursion)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, (list, dict)):
            if depth > limit:
                return True
            todo.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def json_value(payload: bytes) -> Any:
    """A JSON result or item as standard JSON can carry it (non-finite numbers as
    strings, see ``_NONFINITE``); :class:`ResultTooDeep` past ``MAX_RESULT_DEPTH``."""
    try:
        value = json.loads(payload, parse_constant=_NONFINITE.__getitem__)
    except RecursionError:
        raise ResultTooDeep from None
    # Only a payload with that many brackets can nest that deep: most are never walked.
    if (payload.count(b"[") + payload.count(b"{") > MAX_RESULT_DEPTH
            and _depth_over(value, MAX_RESULT_DEPTH)):
        raise ResultTooDeep
    return value


def _wants_json(request: Request) -> bool:
    return MSGPACK not in request.headers.get("accept", "")


def _json_call(resp: CallResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"call_id": resp.call_id, "status": resp.status}
    if resp.status == "success":
        if resp.payload_format == "json":
            try:
                out["result"] = json_value(resp.payload or b"null")
            except ResultTooDeep:
                out["result"], out["result_error"] = None, RESULT_TOO_DEEP
        else:
            out["result"] = None
            out["result_encoding"] = "cloudpickle (called from the Python SDK)"
    elif resp.status != "pending":
        etype = resp.error_type.removeprefix("builtins.")
        out["error"] = {"type": etype, "message": resp.error_message,
                        "traceback": resp.traceback}
    return out


async def inline_result(gw: Gateway, workspace: str, resp: CallResponse) -> CallResponse:
    """A JSON caller's result inline, also when it was stored as a blob (of the call's
    ``workspace``, the caller's own)."""
    if resp.payload_ref and resp.payload_format == "json":
        resp.payload, resp.payload_ref = await read_blob(gw, workspace, resp.payload_ref), ""
    return resp


def _answer(request: Request, resp: CallResponse, replayed: bool = False) -> Response:
    status = 200 if resp.status != "pending" else 202
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if _wants_json(request):
        return JSON(_json_call(resp), status_code=status, headers=headers)
    return Response(msgspec.msgpack.encode(resp), status_code=status, media_type=MSGPACK,
                    headers=headers)


async def _call_payload(request: Request, gw: Gateway) -> tuple[bytes, str, str]:
    """The call's arguments, their format and blob reference, from a msgpack (SDK) or
    JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype == MSGPACK:
        req = await _body(request, gw, _call_decoder, "call request")
        return req.payload, "pickle", req.payload_ref
    if ctype != "application/json":
        raise InvalidError(f"unsupported content type {ctype or 'none'!r}: send "
                           f"application/json ({{\"args\": [...], \"kwargs\": {{...}}}}) "
                           f"or {MSGPACK}")
    body = await request.body()
    if len(body) > gw.settings.max_body_bytes:
        raise PayloadTooLargeError(f"request of {len(body)} bytes exceeds the "
                                   f"{gw.settings.max_body_bytes} byte limit")
    try:
        doc = json.loads(body or b"{}")
    except ValueError as e:
        raise InvalidError(f"malformed JSON body: {e}") from None
    except RecursionError:
        raise InvalidError(TOO_DEEP) from None
    allowed = {"args", "kwargs", "method", "params"}
    if not isinstance(doc, dict) or set(doc) - allowed:
        extra = sorted(set(doc) - allowed) if isinstance(doc, dict) else []
        raise InvalidError('the body must be a JSON object {"args": [...], "kwargs": {...}} '
                           '(plus "method" and "params" for a class)'
                           + (f"; unknown keys: {', '.join(extra)}" if extra else ""))
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise InvalidError(f'"args" must be a list and "kwargs" an object, got '
                           f"{type(args).__name__} and {type(kwargs).__name__}")
    method, params = doc.get("method", ""), doc.get("params", {})
    if not isinstance(method, str) or not isinstance(params, dict):
        raise InvalidError('"method" must be a string and "params" an object')
    try:
        payload = json.dumps({"args": args, "kwargs": kwargs, "method": method,
                              "params": params}).encode()
    except RecursionError:  # read just within the limit, one level more to write
        raise InvalidError(TOO_DEEP) from None
    return payload, "json", ""


def request_hash(fn: str, payload: bytes, fmt: str, ref: str) -> str:
    """What an ``Idempotency-Key`` is bound to: the function and the call's arguments (as
    the gateway stores them, so a JSON body differing only in spacing is the same)."""
    h = hashlib.sha256(f"{fn}\0{fmt}\0{ref}\0".encode())
    h.update(payload)
    return h.hexdigest()


async def _idempotent_call(gw: Gateway, p: Principal, app: str, fn: str, key: str,
                           req_hash: str) -> tuple[str, bool]:
    """(call id, whether it already existed) for an ``Idempotency-Key``; a key used
    before with another request (``req_hash``) is refused with a 422 naming it."""
    if not 1 <= len(key) <= 255:
        raise InvalidError(f"Idempotency-Key of {len(key)} characters: use 1 to 255")
    digest = hashlib.sha256(f"{p.workspace}\0{app}\0{fn}\0{key}".encode()).hexdigest()
    call_id = new_call_id(time.time())
    try:
        await gw.idempotency_kv.create(digest, f"{call_id} {req_hash}".encode())
        return call_id, False
    except nats.js.errors.KeyWrongLastSequenceError:
        raw, _ = await bus.kv_get(gw.idempotency_kv, digest)
        if raw is None:  # expired since
            return call_id, True
        found, _, found_hash = raw.decode().partition(" ")
        if found_hash and found_hash != req_hash:  # (a mapping without one predates hashes)
            raise IdempotencyKeyReusedError(
                f"Idempotency-Key {key!r} was already used for a different request to "
                f"{app}/{fn} (call {found}): a key stands for one request, so resend it "
                "with the same body, or use a new key for a new request") from None
        return found, True


@router.post("/v1/apps/{app}/functions/{fn}/calls", tags=["calls"], openapi_extra=_JSON_OR_MSGPACK)
async def create_call(
    app: str, fn: str, request: Request, gw: GatewayDep,
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the result."),
    p: Principal = Depends(principal),
) -> Response:
    """Call a function with ``{"args": [...], "kwargs": {...}}`` (JSON) or the SDK's
    msgpack encoding. With ``wait`` the answer carries the result if it is ready in time
    (200); otherwise it is ``202`` with the call id to poll ``GET /v1/calls/{id}``.

    An ``Idempotency-Key`` header makes resubmissions safe: the same key (per function)
    with the same body returns the same call, and the function runs once, for as long as
    results are kept; the same key with a different body is refused (422,
    ``IdempotencyKeyReused``).

    JSON has no NaN or infinities: a result holding them has each as the string
    ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (the SDK's msgpack answer keeps the value).
    """
    dep = await _function(gw, p, app, fn)
    payload, fmt, ref = await _call_payload(request, gw)
    resp, replayed = await call_once(gw, p, dep, fn, payload, fmt, ref, wait,
                                     request.headers.get("idempotency-key"))
    return _answer(request, resp, replayed)


async def call_once(gw: Gateway, p: Principal, dep: DeploymentRecord, fn: str, payload: bytes,
                    fmt: str, ref: str, wait: float,
                    key: str | None = None) -> tuple[CallResponse, bool]:
    """One call (or, with an idempotency ``key`` used before, the call it made): its answer
    within ``wait`` seconds, and whether it was replayed. Shared by :func:`create_call` and
    the SDK's fast path (:mod:`burst_gateway.fastcalls`)."""
    app = dep.app
    wait = min(wait, gw.settings.max_sync_wait)
    call_id = None
    if key is not None:
        call_id, existed = await _idempotent_call(gw, p, app, fn, key,
                                                  request_hash(fn, payload, fmt, ref))
        rec = await _record(gw, call_id, p.workspace) if existed else None
        if rec is not None:
            return await inline_result(gw, p.workspace, await _result_of(gw, rec, wait)), True
    # A call waited on, without a key, gets its record only if the caller is answered
    # without the result (it then polls by id): a warm call stores its input and its
    # output, and no record nobody reads (8% of a warm call's latency, measured). Until
    # then the caller holds the only reference to the call; a retry writes the record
    # from the input (burst_agent.attempts), and :func:`_record` finds an answered call
    # by its output.
    lazy = key is None and wait > 0
    try:
        [(rec, fut)] = await submit(gw, p, dep, fn, [payload], register=True,
                                    payload_format=fmt, call_id=call_id, refs=[ref],
                                    records=not lazy)
    except nats.js.errors.KeyWrongLastSequenceError:
        # A racing resubmission with the same key created the call first.
        found = await _record(gw, call_id or "", p.workspace)
        if found is None:
            raise
        return await inline_result(gw, p.workspace, await _result_of(gw, found, wait)), True
    structlog.contextvars.bind_contextvars(call_id=rec.call_id)
    answered = False
    try:
        resp = await _wait_one(gw, rec.call_id, fut, wait)
        answered = resp.status != "pending"
    finally:
        structlog.contextvars.unbind_contextvars("call_id")
        if lazy and not answered:
            await call_store.create_record(gw.calls_kv, rec)
    return await inline_result(gw, p.workspace, resp), False


async def _result_of(gw: Gateway, rec: CallRecord, wait: float) -> CallResponse:
    """The call's current attempt's output, waiting up to ``wait`` seconds for it."""
    fut = gw.outputs.register(rec.call_id, rec.attempt_token)
    out = await gw.outputs.fetch(rec.call_id, rec.attempt)
    if out is not None and out.attempt_token == rec.attempt_token:
        gw.outputs.unregister(rec.call_id, fut)
        return _from_output(out)
    return await _wait_one(gw, rec.call_id, fut, wait)


@router.post("/v1/apps/{app}/functions/{fn}/calls/batch", tags=["calls"],
             openapi_extra=_MSGPACK_BODY, status_code=202)
async def create_calls(app: str, fn: str, request: Request, gw: GatewayDep,
                       p: Principal = Depends(principal)) -> Response:
    """Create up to 1,000 calls of one function at once (a page of a map's inputs);
    answers with their ids in the order of the payloads."""
    dep = await _function(gw, p, app, fn)
    req = await _body(request, gw, _batch_decoder, "batch request")
    if not 1 <= len(req.payloads) <= MAX_BATCH:
        raise InvalidError(f"a batch holds 1 to {MAX_BATCH} calls, got {len(req.payloads)}")
    made = await submit(gw, p, dep, fn, req.payloads, register=False,
                        refs=req.payload_refs or None)
    return _response(CallBatchResponse(calls=[_ref(rec) for rec, _ in made]), 202)


@router.post("/v1/calls/wait", tags=["calls"], openapi_extra=_MSGPACK_BODY)
async def wait_calls(request: Request, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> Response:
    """Wait up to ``wait`` seconds for any of up to 1,000 calls; answers with every one
    of them that is finished (possibly none)."""
    req = await _body(request, gw, _wait_decoder, "wait request")
    if len(req.calls) > MAX_BATCH:
        raise InvalidError(f"a wait names at most {MAX_BATCH} calls, got {len(req.calls)}")
    for name, value in (("wait", req.wait), ("linger", req.linger)):
        if math.isnan(value):  # (would pass every bound below, and wait forever)
            raise InvalidError(f"{name}={value}: use a number of seconds")
    results = await wait_many(gw, p.workspace, req.calls,
                              min(max(req.wait, 0.0), gw.settings.max_sync_wait),
                              min(max(req.linger, 0.0), 1.0))
    return _response(CallWaitResponse(results=results))


@router.get("/v1/calls/{call_id}", tags=["calls"])
async def get_call(
    call_id: str, request: Request, gw: GatewayDep,
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the result."),
    p: Principal = Depends(principal),
) -> Response:
    """A call's status and, once finished, its result (long-poll with ``wait``).

    Non-finite numbers in a JSON result are the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (JSON has no such numbers)."""
    rec = await _record(gw, call_id, p.workspace)
    if rec is None:
        raise NotFoundError(f"call {call_id!r} not found (results are kept "
                            f"{gw.settings.result_retention / 86400:g} days)")
    resp = await _result_of(gw, rec, min(wait, gw.settings.max_sync_wait))
    return _answer(request, await inline_result(gw, p.workspace, resp))


async def _read_items(gw: Gateway, rec: CallRecord, cursor: int,
                      limit: int = 1000) -> tuple[list[OutputItem], int]:
    """Items of the call's current attempt stored after stream sequence ``cursor``."""
    subject = names.items_subject(rec.call_id, rec.attempt)
    items: list[OutputItem] = []
    while len(items) < limit:
        try:
            raw = await gw.js.get_msg(names.STREAM_OUTPUTS, seq=cursor + 1, subject=subject,
                                      next=True)
        except nats.js.errors.NotFoundError:
            break
        assert raw.seq is not None and raw.data is not None  # a message was found
        cursor = raw.seq
        item = OutputItemDecoder.decode(raw.data)
        if item.attempt_token == rec.attempt_token:
            items.append(item)
    return items, cursor


@router.get("/v1/calls/{call_id}/items", tags=["calls"])
async def call_items(
    call_id: str, request: Request, gw: GatewayDep,
    cursor: int = Query(0, ge=0, le=MAX_CURSOR,
                        description="The cursor the previous page returned."),
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for new items."),
    p: Principal = Depends(principal),
) -> Response:
    """Items a generator call yielded so far (a page after ``cursor``), and its final
    answer once every item has been listed."""
    rec = await _record(gw, call_id, p.workspace)
    if rec is None:
        raise NotFoundError(f"call {call_id!r} not found")
    deadline = time.monotonic() + min(wait, gw.settings.max_sync_wait)
    final: CallResponse | None = None
    while True:
        out = await gw.outputs.fetch(call_id, rec.attempt)
        # The output is stored after the last item: read items after seeing it, so a page
        # with the final answer never leaves an item out.
        items, cursor = await _read_items(gw, rec, cursor)
        if out is not None and out.attempt_token == rec.attempt_token and not items:
            final = _from_output(out)
        if items or final is not None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
        rec = await _record(gw, call_id, p.workspace) or rec  # a retry moves the attempt on
    if _wants_json(request):
        values: list[Any] = []
        errors: dict[str, str] = {}
        for n, i in enumerate(items):
            try:
                values.append(json_value(i.payload) if i.payload_format == "json" else None)
            except ResultTooDeep:
                values.append(None)
                errors[str(n)] = RESULT_TOO_DEEP  # by the item's place in this page
        body: dict[str, Any] = {"items": values, "cursor": cursor}
        if errors:
            body["item_errors"] = errors
        if final is not None:
            body["final"] = _json_call(final)
        return JSON(body)
    return _response(CallItemsResponse(items=[i.payload for i in items], cursor=cursor,
                                       final=final))


@router.delete("/v1/calls/{call_id}", tags=["calls"])
async def cancel_call(call_id: str, gw: GatewayDep,
                      p: Principal = Depends(principal)) -> dict[str, Any]:
    """Cancel a call: it never starts if it has not, and is stopped if it runs.

    Answers ``{"cancelled": true}``, or ``false`` with the status when it had finished.
    """
    rec = await _record(gw, call_id, p.workspace)
    if rec is None:
        raise NotFoundError(f"call {call_id!r} not found")
    out = Output(call_id=rec.call_id, input_id=rec.input_id, attempt=rec.attempt,
                 attempt_token=rec.attempt_token, status="terminated",
                 error_type="burst.exception.InputCancellation",
                 error_message=f"call {rec.call_id} was cancelled", finished_at=time.time(),
                 workspace=rec.workspace)
    try:
        await bus.publish(gw.js, names.output_subject(rec.call_id, rec.attempt), encode(out),
                          msg_id=f"{rec.input_id}:{rec.attempt}",
                          headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    except nats.js.errors.APIError as e:
        if e.err_code != WRONG_LAST_SEQUENCE:
            raise
        done = await gw.outputs.fetch(rec.call_id, rec.attempt)
        return {"call_id": call_id, "cancelled": False,
                "status": done.status if done else "finished"}
    fn_key = names.function_key(rec.workspace, rec.app, rec.function)
    await gw.nc.publish(names.call_cancelled_subject(fn_key),
                        encode(CallCancelled(call_id=call_id, fn_key=fn_key, at=time.time())))
    return {"call_id": call_id, "cancelled": True}


def _valid_call_id(call_id: str) -> bool:
    return (call_id.startswith("fc-") and len(call_id) == 35
            and all(c in "0123456789abcdef" for c in call_id[3:]))
