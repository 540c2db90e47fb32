"""Calling functions: create a call, wait for its output, fetch it later by id."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import structlog
from fastapi import APIRouter, Depends, Query, Request, Response

from burst._protocol import MSGPACK, CallRequest, CallResponse
from burst.exception import InvalidError, NotFoundError, PayloadTooLargeError
from burst_core import bus, logs, names
from burst_core.schemas import CallRecord, CallRecordDecoder, Input, InputAccepted, Output, encode

from burst_gateway.auth import Principal, principal

router = APIRouter()
log = logs.get("burst.gateway.calls")
_call_decoder = msgspec.msgpack.Decoder(CallRequest)


def _response(resp: CallResponse, status: int = 200) -> Response:
    return Response(msgspec.msgpack.encode(resp), status_code=status, media_type=MSGPACK)


def _from_output(out: Output) -> CallResponse:
    return CallResponse(
        call_id=out.call_id, status=out.status, payload=out.payload, error_type=out.error_type,
        error_message=out.error_message, traceback=out.traceback, log_lines=out.log_lines,
    )


async def _wait(gw: Any, call_id: str, fut: asyncio.Future[Output], wait: float) -> CallResponse:
    try:
        out = await asyncio.wait_for(asyncio.shield(fut), timeout=wait) if wait > 0 else None
    except TimeoutError:
        out = None
    finally:
        gw.outputs.unregister(call_id, fut)
    if out is None:
        return CallResponse(call_id=call_id, status="pending")
    return _from_output(out)


@router.post("/v1/apps/{app}/functions/{fn}/calls", tags=["calls"],
             openapi_extra={"requestBody": {"content": {MSGPACK: {}}, "required": True}})
async def create_call(
    app: str, fn: str, request: Request,
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the result."),
    p: Principal = Depends(principal),
) -> Response:
    """Call a function. With ``wait`` the answer carries the result if it is ready in
    time (200); otherwise it is ``202`` with the call id to poll ``GET /v1/calls/{id}``."""
    gw = request.app.state.gw
    dep = await gw.deployment(p.workspace, app)
    if dep is None:
        raise NotFoundError(f"app {app!r} is not deployed in workspace {p.workspace!r}")
    if not any(f.name == fn for f in dep.functions):
        known = ", ".join(f.name for f in dep.functions)
        raise NotFoundError(f"app {app!r} has no function {fn!r} (it has: {known})")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != MSGPACK:
        raise InvalidError(f"unsupported content type {ctype or 'none'!r}: send {MSGPACK}")
    body = await request.body()
    if len(body) > gw.settings.max_body_bytes:
        raise PayloadTooLargeError(
            f"request of {len(body)} bytes exceeds the {gw.settings.max_body_bytes} byte limit")
    try:
        req = _call_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed call request: {e}") from None

    fn_key = names.function_key(p.workspace, app, fn)
    call_id = "fc-" + uuid.uuid4().hex
    input_id = "in-" + uuid.uuid4().hex
    token = uuid.uuid4().hex
    now = time.time()
    structlog.contextvars.bind_contextvars(call_id=call_id)
    try:
        record = CallRecord(call_id=call_id, workspace=p.workspace, app=app, function=fn,
                            input_id=input_id, attempt=1, attempt_token=token, created_at=now,
                            deployment_id=dep.deployment_id)
        await gw.calls_kv.create(call_id, encode(record))
        fut = gw.outputs.register(call_id, token)
        inp = Input(workspace=p.workspace, app=app, function=fn, call_id=call_id,
                    input_id=input_id, attempt=1, attempt_token=token, payload=req.payload,
                    accepted_at=now, deployment_id=dep.deployment_id)
        await bus.publish(gw.js, names.input_subject(fn_key), encode(inp), msg_id=input_id)
        # A payload-free hint for the scheduler; losing it costs a reconcile tick, nothing more.
        await gw.nc.publish(names.input_accepted_subject(fn_key),
                            encode(InputAccepted(fn_key=fn_key, call_id=call_id, at=now)))
        resp = await _wait(gw, call_id, fut, min(wait, gw.settings.max_sync_wait))
    finally:
        structlog.contextvars.unbind_contextvars("call_id")
    return _response(resp, 200 if resp.status != "pending" else 202)


@router.get("/v1/calls/{call_id}", tags=["calls"])
async def get_call(
    call_id: str, request: Request,
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the result."),
    p: Principal = Depends(principal),
) -> Response:
    """A call's status and, once finished, its result (long-poll with ``wait``)."""
    gw = request.app.state.gw
    raw, _ = await bus.kv_get(gw.calls_kv, call_id) if _valid_call_id(call_id) else (None, 0)
    rec = CallRecordDecoder.decode(raw) if raw is not None else None
    if rec is None or rec.workspace != p.workspace:
        raise NotFoundError(f"call {call_id!r} not found (results are kept "
                            f"{gw.settings.result_retention / 86400:g} days)")
    fut = gw.outputs.register(call_id, rec.attempt_token)
    out = await gw.outputs.fetch(call_id, rec.attempt)
    if out is not None and out.attempt_token == rec.attempt_token:
        gw.outputs.unregister(call_id, fut)
        return _response(_from_output(out))
    resp = await _wait(gw, call_id, fut, min(wait, gw.settings.max_sync_wait))
    return _response(resp, 200 if resp.status != "pending" else 202)


def _valid_call_id(call_id: str) -> bool:
    return call_id.startswith("fc-") and len(call_id) == 35 and call_id[3:].isalnum()
