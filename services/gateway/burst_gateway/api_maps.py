"""Maps for callers that are not Python: submit many inputs as one map, read its results
in input order, a page at a time."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from burst.exception import InvalidError, NotFoundError
from burst.wire import CallRef
from burst_core import bus, names
from burst_core.calls.caller import MAX_BATCH
from burst_core.schemas import CallRecord, MapRecord, MapRecordDecoder, encode
from burst_gateway.api_calls import _function, _json_call, inline_result
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import JSON, TOO_DEEP
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()
#: Most inputs one map may hold (its record is one KV value).
MAX_MAP_INPUTS = 10_000


class MapInput(BaseModel):
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class MapCreate(BaseModel):
    inputs: list[MapInput] = Field(description="One entry per call, in order.")


async def _kv(gw: Gateway) -> KeyValue:
    if gw.maps_kv is None:
        gw.maps_kv = await gw.js.key_value(names.KV_MAPS)
    return gw.maps_kv


@router.post("/v1/apps/{app}/functions/{fn}/maps", tags=["calls"], status_code=202)
async def create_map(app: str, fn: str, body: MapCreate, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Start one call per input (up to 10,000); read the results with
    ``GET /v1/maps/{map_id}/results``, in input order."""
    if not 1 <= len(body.inputs) <= MAX_MAP_INPUTS:
        raise InvalidError(f"a map holds 1 to {MAX_MAP_INPUTS} inputs, got {len(body.inputs)}")
    dep = await _function(gw, p, app, fn)
    try:  # every input first: a bad one makes no call at all
        payloads = [json.dumps({"args": i.args, "kwargs": i.kwargs}).encode()
                    for i in body.inputs]
    except RecursionError:  # read just within the limit, one level more to write
        raise InvalidError(TOO_DEEP) from None
    refs: list[CallRecord] = []
    for start in range(0, len(payloads), MAX_BATCH):
        refs += [rec for rec, _ in await gw.caller.submit(
            p.workspace, dep, fn, payloads[start:start + MAX_BATCH], register=False,
            payload_format="json")]
    map_id = "mp-" + uuid.uuid4().hex
    rec = MapRecord(map_id=map_id, workspace=p.workspace, app=app, function=fn,
                    calls=[r.call_id for r in refs], tokens=[r.attempt_token for r in refs],
                    created_at=time.time())
    await (await _kv(gw)).put(map_id, encode(rec))
    return {"map_id": map_id, "count": len(refs)}


@router.get("/v1/maps/{map_id}/results", tags=["calls"])
async def map_results(
    map_id: str, gw: GatewayDep,
    offset: int = Query(0, ge=0, description="Index of the first result of the page."),
    limit: int = Query(100, ge=1, le=1000, description="Most results in the page."),
    wait: float = Query(0.0, ge=0.0, description="Seconds to wait for the page's first result."),
    p: Principal = Depends(principal),
) -> JSON:
    """Results in input order from ``offset``: the finished ones up to the first that is
    still running (so pages never skip one). ``next_offset`` is where to continue.
    Non-finite numbers in results are the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``."""
    raw, _ = await bus.kv_get(await _kv(gw), map_id) if _valid_map_id(map_id) else (None, 0)
    rec = MapRecordDecoder.decode(raw) if raw is not None else None
    if rec is None or rec.workspace != p.workspace:
        raise NotFoundError(f"map {map_id!r} not found")
    page = [CallRef(call_id=c, attempt_token=t)
            for c, t in zip(rec.calls[offset:offset + limit], rec.tokens[offset:offset + limit],
                            strict=True)]
    done: dict[str, Any] = {r.call_id: r for r in await gw.caller.wait_many(p.workspace, page, 0.0)}
    deadline = time.monotonic() + min(wait, gw.settings.max_sync_wait)
    # Wait while the page's first result is missing (a page never skips a running call).
    while page and page[0].call_id not in done and time.monotonic() < deadline:
        pending = [r for r in page if r.call_id not in done]
        for resp in await gw.caller.wait_many(p.workspace, pending,
                                              deadline - time.monotonic(), linger=0.05):
            done[resp.call_id] = resp
    results = []
    for r in page:
        if r.call_id not in done:
            break
        results.append(_json_call(await inline_result(gw, p.workspace, done[r.call_id])))
    # As JSON directly: FastAPI's serializer stops at a shallower depth than results may have.
    return JSON({"map_id": map_id, "count": len(rec.calls), "offset": offset,
                 "results": results, "next_offset": offset + len(results),
                 "finished": offset + len(results) >= len(rec.calls)})


def _valid_map_id(map_id: str) -> bool:
    """The form :func:`create_map` gives ids (anything else is no map's: it is never looked
    up, so it cannot reach NATS as a key it refuses)."""
    return (len(map_id) == 35 and map_id.startswith("mp-")
            and all(c in "0123456789abcdef" for c in map_id[3:]))
