"""burst.Volume for callers outside containers (the SDK and CLI in a client): one
msgpack operation per request (``VolumeRequest``), in the caller's workspace. A file is
uploaded as chunks of at most ``burst_core.volumes.CHUNK`` bytes, one request each, and
read back the same way: no request holds a whole large file."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Depends, Request, Response

from burst.exception import InvalidError, PayloadTooLargeError
from burst.wire import MSGPACK, volume_request_decoder
from burst_core.volumes import Volumes
from burst_gateway.auth import Principal, principal
from burst_gateway.errors import TOO_DEEP
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()
_BODY = {"requestBody": {"content": {MSGPACK: {}}, "required": True}}


def volumes(gw: Gateway) -> Volumes:
    if gw.volumes is None:
        gw.volumes = Volumes(gw.js, gw.settings.volume_max_bytes,
                             gw.settings.volume_chunk_grace)
    return gw.volumes


@router.post("/v1/volumes", tags=["objects"], openapi_extra=_BODY)
async def volume_op(request: Request, gw: GatewayDep,
                    p: Principal = Depends(principal)) -> Response:
    """One operation on the caller's volumes (msgpack ``VolumeRequest``): create, list,
    delete, list a directory, read a file's entry or one chunk, upload a chunk, commit
    files, remove or copy paths. Another workspace's volume is not found (404)."""
    size = int(request.headers.get("content-length") or 0)
    if size > gw.settings.max_body_bytes:
        raise PayloadTooLargeError(f"request of {size} bytes exceeds the "
                                   f"{gw.settings.max_body_bytes} byte limit (files go up in "
                                   "chunks of 4 MiB)")
    try:
        req = volume_request_decoder.decode(await request.body())
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed request: {e}") from None
    except RecursionError:
        raise InvalidError(TOO_DEEP) from None
    resp = await volumes(gw).op(p.workspace, req)
    return Response(msgspec.msgpack.encode(resp), media_type=MSGPACK)
