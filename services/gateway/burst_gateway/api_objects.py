"""burst.Dict and burst.Queue for callers outside containers (the SDK in a client)."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, Request, Response

from burst.exception import InvalidError
from burst.wire import MSGPACK, dict_request_decoder, queue_request_decoder
from burst_core.objects import Objects
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import TOO_DEEP
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()
_BODY = {"requestBody": {"content": {MSGPACK: {}}, "required": True}}


def _objects(gw: Gateway) -> Objects:
    if gw.objects is None:
        gw.objects = Objects(gw.js)
    return gw.objects


async def _decode(request: Request, decoder: msgspec.msgpack.Decoder) -> object:  # type: ignore[type-arg]
    try:
        return decoder.decode(await request.body())
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed request: {e}") from None
    except RecursionError:
        raise InvalidError(TOO_DEEP) from None


@router.post("/v1/dicts", tags=["objects"], openapi_extra=_BODY)
async def dict_op(request: Request, gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """One operation on a named Dict of the caller's workspace (msgpack ``DictRequest``)."""
    req = await _decode(request, dict_request_decoder)
    resp = await _objects(gw).dict_op(p.workspace, req)  # type: ignore[arg-type]
    return Response(msgspec.msgpack.encode(resp), media_type=MSGPACK)


@router.post("/v1/queues", tags=["objects"], openapi_extra=_BODY)
async def queue_op(request: Request, gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """One operation on a named Queue of the caller's workspace (msgpack ``QueueRequest``)."""
    req = await _decode(request, queue_request_decoder)
    resp = await _objects(gw).queue_op(p.workspace, req)  # type: ignore[arg-type]
    return Response(msgspec.msgpack.encode(resp), media_type=MSGPACK)
