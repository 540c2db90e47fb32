"""Calling functions: create calls (one or a page of a map), wait for outputs, fetch by id."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request, Response

from burst.exception import (
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
)
from burst.wire import (
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
from burst_core import logs, names
from burst_core.calls.caller import MAX_CURSOR
from burst_core.schemas import (
    CallRecord,
    DeploymentRecord,
)
from burst_gateway.api_traces import traced, traced_batch
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import JSON, TOO_DEEP
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()
log = logs.get("burst.gateway.calls")
_call_decoder = msgspec.msgpack.Decoder(CallRequest)
_batch_decoder = msgspec.msgpack.Decoder(CallBatchRequest)
_wait_decoder = msgspec.msgpack.Decoder(CallWaitRequest)
_MSGPACK_BODY = {"requestBody": {"content": {MSGPACK: {}}, "required": True}}


def _response(resp: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.msgpack.encode(resp), status_code=status, media_type=MSGPACK)


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
    return await gw.caller.function(p.workspace, app, fn)


def _ref(rec: CallRecord) -> CallRef:
    return CallRef(call_id=rec.call_id, attempt_token=rec.attempt_token)


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
    return await gw.caller.inline_result(workspace, resp)


def not_found(gw: Gateway, call_id: str) -> str:
    """Why a call is not found: it never was, or its result's retention passed (both
    named; a transient call's id says it was one)."""
    s = gw.settings
    full = f"{s.result_retention / 86400:g} days"
    if names.is_transient_call(call_id):
        return (f"call {call_id!r} not found: it was a transient call (a waited .remote() "
                f"or a map's input), whose result is kept {s.transient_result_retention:g} s "
                f"(BURST_TRANSIENT_RESULT_RETENTION; other results {full}, "
                "BURST_RESULT_RETENTION): use .spawn() to read a result later")
    return f"call {call_id!r} not found (results are kept {full})"


def _answer(request: Request, resp: CallResponse, replayed: bool = False) -> Response:
    status = 200 if resp.status != "pending" else 202
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if _wants_json(request):
        return JSON(_json_call(resp), status_code=status, headers=headers)
    return Response(msgspec.msgpack.encode(resp), status_code=status, media_type=MSGPACK,
                    headers=headers)


async def _call_payload(request: Request, gw: Gateway) -> tuple[bytes, str, str, str]:
    """The call's arguments, their format, blob reference and submission id, from a
    msgpack (SDK) or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype == MSGPACK:
        req = await _body(request, gw, _call_decoder, "call request")
        return req.payload, "pickle", req.payload_ref, req.submission_id
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
    return payload, "json", "", ""


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
    payload, fmt, ref, sid = await _call_payload(request, gw)
    resp, replayed = await traced(gw, request.headers, p.workspace, app, fn, lambda: (
        gw.caller.call_once(p.workspace, dep, fn, payload, fmt, ref, wait,
                            request.headers.get("idempotency-key"), submission=sid)))
    return _answer(request, resp, replayed)


@router.post("/v1/apps/{app}/functions/{fn}/calls/batch", tags=["calls"],
             openapi_extra=_MSGPACK_BODY, status_code=202)
async def create_calls(app: str, fn: str, request: Request, gw: GatewayDep,
                       p: Principal = Depends(principal)) -> Response:
    """Create up to 1,000 calls of one function at once (a page of a map's inputs);
    answers with their ids in the order of the payloads."""
    dep = await _function(gw, p, app, fn)
    req = await _body(request, gw, _batch_decoder, "batch request")
    made = await traced_batch(gw, request.headers, p.workspace, app, fn, lambda: (
        gw.caller.submit(p.workspace, dep, fn, req.payloads, register=False,
                         refs=req.payload_refs or None, submission=req.submission_id,
                         transient=req.transient)))
    return _response(CallBatchResponse(calls=[_ref(rec) for rec, _ in made]), 202)


@router.post("/v1/calls/wait", tags=["calls"], openapi_extra=_MSGPACK_BODY)
async def wait_calls(request: Request, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> Response:
    """Wait up to ``wait`` seconds for any of up to 1,000 calls; answers with every one
    of them that is finished (possibly none)."""
    req = await _body(request, gw, _wait_decoder, "wait request")
    results = await gw.caller.wait_request(p.workspace, req)
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
    rec = await gw.caller.record(call_id, p.workspace)
    if rec is None:
        raise NotFoundError(not_found(gw, call_id))
    resp = await gw.caller.result_of(rec, min(wait, gw.settings.max_sync_wait))
    return _answer(request, await inline_result(gw, p.workspace, resp))


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
    items, cursor, final = await gw.caller.items(p.workspace, call_id, cursor, wait)
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


@router.get("/v1/calls/{call_id}/graph", tags=["calls"])
async def call_graph(call_id: str, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> JSON:
    """The tree of calls this call belongs to (calls made from inside containers record
    the call that made them), from its root: each node has ``call_id``, ``input_id``,
    ``app``, ``function_name``, ``status`` (``pending``, ``success``, ``failure``,
    ``timeout``, ``terminated``) and ``children``."""
    return JSON(await gw.caller.graph(p.workspace, call_id))


@router.delete("/v1/calls/{call_id}", tags=["calls"])
async def cancel_call(call_id: str, gw: GatewayDep,
                      p: Principal = Depends(principal)) -> dict[str, Any]:
    """Cancel a call: it never starts if it has not, and is stopped if it runs. The calls
    it made from inside its container are cancelled with it (and theirs with them).

    Answers ``{"cancelled": true}``, or ``false`` with the status when it had finished.
    """
    return await gw.caller.cancel(p.workspace, call_id)
