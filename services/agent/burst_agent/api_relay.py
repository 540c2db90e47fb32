"""Calls from inside a container: the SDK's client requests (``kind="api"`` platform
requests, :class:`burst.wire.ApiRequest`) answered as the gateway answers them, with the
same :class:`burst_core.calls.caller.Caller`, in the container's workspace.

One table (``ROUTES``) maps each request the SDK's call forms send to its operation;
anything else is refused with an error naming it. A call made here records its parent
(the call the requesting code runs) and is refused with :class:`DeadlockError` when it
would wait for a slot its own ancestors hold (see :func:`check_deadlock`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from burst import wire
from burst.exception import DeadlockError, InvalidError, NotFoundError
from burst_core import names
from burst_core.calls.caller import MAX_CURSOR, Caller, Parent, check_ref
from burst_core.schemas import DeploymentRecord

_call_decoder = msgspec.msgpack.Decoder(wire.CallRequest)
_batch_decoder = msgspec.msgpack.Decoder(wire.CallBatchRequest)
_wait_decoder = msgspec.msgpack.Decoder(wire.CallWaitRequest)


@dataclass
class Request:
    """One relayed request: who makes it and what it asks."""

    caller: Caller
    workspace: str
    parent: Parent | None
    api: wire.ApiRequest
    args: tuple[str, ...]

    def number(self, name: str, default: float = 0.0, limit: float | None = None) -> float:
        raw = self.api.params.get(name)
        try:
            value = float(raw) if raw is not None else default
        except ValueError:
            raise InvalidError(f"{name}={raw!r}: use a number") from None
        if math.isnan(value) or value < 0:
            raise InvalidError(f"{name}={raw!r}: use a number of seconds, 0 or more")
        return value if limit is None else min(value, limit)

    def decode(self, decoder: msgspec.msgpack.Decoder[Any], what: str) -> Any:
        try:
            return decoder.decode(self.api.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise InvalidError(f"malformed {what}: {e}") from None


Answer = tuple[int, bytes]
Handler = Callable[[Request], Awaitable[Answer]]


def _msgpack(resp: msgspec.Struct, status: int = 200) -> Answer:
    return status, wire.encode(resp)


def check_deadlock(dep: DeploymentRecord, fn: str, parent: Parent | None) -> None:
    """Refuse a waited-on call from a container when every input slot of ``fn``
    (``max_containers`` × inputs per container) is held by the caller's own ancestors
    (the parent included): they wait for it, so it could never start."""
    if parent is None:
        return
    spec = next(f for f in dep.functions if f.name == fn)
    if not spec.max_containers:
        return
    slots = spec.max_containers * max(1, spec.max_inputs)
    fn_key = names.function_key(dep.workspace, dep.app, fn)
    held = parent.lineage.count(fn_key)
    if held >= slots:
        raise DeadlockError(
            f"call of {dep.app}/{fn} from call {parent.call_id} would never start: all "
            f"{slots} input slot(s) of {fn} (max_containers={spec.max_containers} × "
            f"{max(1, spec.max_inputs)} input(s) per container) are held by its own "
            "callers, which wait for it; raise max_containers or do not wait on it")


async def _function(r: Request) -> tuple[DeploymentRecord, str]:
    app, fn = r.args
    for kind, value in (("app", app), ("function", fn)):
        try:
            wire.check_ident(kind, value)
        except ValueError as e:
            raise InvalidError(str(e)) from None
    return await r.caller.function(r.workspace, app, fn), fn


async def _call(r: Request) -> Answer:
    dep, fn = await _function(r)
    req = r.decode(_call_decoder, "call request")
    wait = r.number("wait", limit=r.caller.max_sync_wait)
    parent = r.parent
    if wait > 0:  # .remote() waits; .spawn() and .remote_gen() come back at once
        check_deadlock(dep, fn, parent)
    elif parent is not None:
        # Nobody is known to wait for a spawned call: its lineage of waiting callers
        # starts afresh (a spawner that finished holds no slot).
        parent = Parent(parent.call_id, [])
    # (never transient: a container's calls keep their results as long as any)
    resp, _ = await r.caller.call_once(r.workspace, dep, fn, req.payload, "pickle",
                                       req.payload_ref, wait, parent=parent, transient=False)
    return _msgpack(resp, 200 if resp.status != "pending" else 202)


async def _batch(r: Request) -> Answer:
    dep, fn = await _function(r)
    req = r.decode(_batch_decoder, "batch request")
    check_deadlock(dep, fn, r.parent)  # a map waits for its inputs
    made = await r.caller.submit(r.workspace, dep, fn, req.payloads, register=False,
                                 refs=req.payload_refs or None, parent=r.parent)
    return _msgpack(wire.CallBatchResponse(calls=[
        wire.CallRef(call_id=rec.call_id, attempt_token=rec.attempt_token)
        for rec, _ in made]), 202)


async def _wait(r: Request) -> Answer:
    req = r.decode(_wait_decoder, "wait request")
    results = await r.caller.wait_request(r.workspace, req)
    return _msgpack(wire.CallWaitResponse(results=results))


async def _get(r: Request) -> Answer:
    (call_id,) = r.args
    rec = await r.caller.record(call_id, r.workspace)
    if rec is None:
        raise NotFoundError(f"call {call_id!r} not found")
    resp = await r.caller.result_of(rec, r.number("wait", limit=r.caller.max_sync_wait))
    return _msgpack(resp, 200 if resp.status != "pending" else 202)


async def _items(r: Request) -> Answer:
    (call_id,) = r.args
    cursor = int(r.number("cursor"))
    if cursor > MAX_CURSOR:
        raise InvalidError(f"cursor={cursor}: at most {MAX_CURSOR}")
    items, cursor, final = await r.caller.items(r.workspace, call_id, cursor,
                                                r.number("wait"))
    return _msgpack(wire.CallItemsResponse(items=[i.payload for i in items], cursor=cursor,
                                           final=final))


async def _cancel(r: Request) -> Answer:
    (call_id,) = r.args
    return 200, json.dumps(await r.caller.cancel(r.workspace, call_id)).encode()


async def _graph(r: Request) -> Answer:
    (call_id,) = r.args
    return 200, json.dumps(await r.caller.graph(r.workspace, call_id)).encode()


async def _put_blob(r: Request) -> Answer:
    (ref,) = r.args
    stored = await r.caller.store_blob(r.workspace, r.api.body)
    if stored != check_ref(ref):
        raise InvalidError(f"blob hash mismatch: the path says {ref}, the body hashes to "
                           f"{stored}")
    return 201, json.dumps({"ref": ref, "size": len(r.api.body)}).encode()


async def _get_blob(r: Request) -> Answer:
    (ref,) = r.args
    return 200, await r.caller.read_blob(r.workspace, check_ref(ref))


async def _head_blob(r: Request) -> Answer:
    (ref,) = r.args
    return (200 if await r.caller.blob_exists(r.workspace, check_ref(ref)) else 404), b""


_NAME = r"([^/]+)"
#: (method, path pattern) -> operation: every request the SDK's call forms make.
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (m, re.compile(p), h) for m, p, h in (
        ("POST", rf"/v1/apps/{_NAME}/functions/{_NAME}/calls", _call),
        ("POST", rf"/v1/apps/{_NAME}/functions/{_NAME}/calls/batch", _batch),
        ("POST", r"/v1/calls/wait", _wait),
        ("GET", rf"/v1/calls/{_NAME}", _get),
        ("GET", rf"/v1/calls/{_NAME}/items", _items),
        ("GET", rf"/v1/calls/{_NAME}/graph", _graph),
        ("DELETE", rf"/v1/calls/{_NAME}", _cancel),
        ("PUT", rf"/v1/blobs/{_NAME}", _put_blob),
        ("GET", rf"/v1/blobs/{_NAME}", _get_blob),
        ("HEAD", rf"/v1/blobs/{_NAME}", _head_blob),
    )
]


async def answer(caller: Caller, workspace: str, parent: Parent | None,
                 api: wire.ApiRequest) -> wire.ApiResponse:
    """The answer to one relayed request (an error raises: the relay answers it)."""
    for method, pattern, handler in ROUTES:
        m = pattern.fullmatch(api.path)
        if m is not None and method == api.method:
            status, body = await handler(Request(caller, workspace, parent, api, m.groups()))
            return wire.ApiResponse(status=status, body=body)
    raise InvalidError(f"{api.method} {api.path} is not available inside a container (only "
                       "calls: .remote, .spawn, .map, FunctionCall and their blobs)")
