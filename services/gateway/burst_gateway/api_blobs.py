"""Blobs: call arguments and results above the inline limit, in the object store."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from burst.exception import InvalidError, PayloadTooLargeError
from burst.wire import MAX_PAYLOAD
from burst_core.calls.caller import check_ref
from burst_gateway.auth import Principal, principal
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()


async def blob_exists(gw: Gateway, workspace: str, ref: str) -> bool:
    return await gw.caller.blob_exists(workspace, ref)


async def read_blob(gw: Gateway, workspace: str, ref: str) -> bytes:
    return await gw.caller.read_blob(workspace, ref)


async def store_blob(gw: Gateway, workspace: str, data: bytes) -> str:
    return await gw.caller.store_blob(workspace, data)


@router.put("/v1/blobs/{ref}", tags=["calls"], status_code=201)
async def put_blob(ref: str, request: Request, gw: GatewayDep,
                   p: Principal = Depends(principal)) -> dict[str, Any]:
    """Store a payload above the inline limit under its sha256, in the caller's workspace
    (kept as long as results)."""
    check_ref(ref)
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_PAYLOAD:
        raise PayloadTooLargeError(f"payload of {size} bytes exceeds the {MAX_PAYLOAD} byte "
                                   f"({MAX_PAYLOAD >> 20} MiB) limit")
    body = await request.body()
    if len(body) > MAX_PAYLOAD:
        raise PayloadTooLargeError(f"payload of {len(body)} bytes exceeds the {MAX_PAYLOAD} "
                                   f"byte ({MAX_PAYLOAD >> 20} MiB) limit")
    actual = hashlib.sha256(body).hexdigest()
    if actual != ref:
        raise InvalidError(f"blob hash mismatch: URL says {ref}, body hashes to {actual}")
    await store_blob(gw, p.workspace, body)
    return {"ref": ref, "size": len(body)}


@router.get("/v1/blobs/{ref}", tags=["calls"])
async def get_blob(ref: str, gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """A stored payload (a large argument or result) of the caller's workspace, by its
    sha256; 404 when the workspace has none by that hash."""
    check_ref(ref)
    data = await read_blob(gw, p.workspace, ref)
    return Response(data, media_type="application/octet-stream")


@router.head("/v1/blobs/{ref}", tags=["calls"])
async def head_blob(ref: str, gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """200 when the caller's workspace has stored the blob, 404 otherwise."""
    check_ref(ref)
    ok = await blob_exists(gw, p.workspace, ref)
    return Response(status_code=200 if ok else 404)
