"""Blobs: call arguments and results above the inline limit, in the object store."""

from __future__ import annotations

import hashlib
from typing import Any

import nats.js.errors
from fastapi import APIRouter, Depends, Request, Response
from nats.js.object_store import ObjectStore

from burst.exception import InvalidError, NotFoundError, PayloadTooLargeError
from burst.wire import MAX_PAYLOAD
from burst_core import names
from burst_gateway.auth import Principal, principal
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()


def check_ref(ref: str) -> str:
    if len(ref) != 64 or any(c not in "0123456789abcdef" for c in ref):
        raise InvalidError(f"invalid blob reference {ref!r}: expected a sha256 (64 hex digits)")
    return ref


async def blob_exists(gw: Gateway, workspace: str, ref: str) -> bool:
    """Whether ``workspace`` stored the blob ``ref`` (another workspace's copy does not
    count: blobs are scoped to their workspace)."""
    try:
        await (await blob_store(gw)).get_info(names.blob_name(workspace, ref))
        return True
    except nats.js.errors.NotFoundError:
        return False


async def blob_store(gw: Gateway) -> ObjectStore:
    if gw.blobs is None:
        gw.blobs = await gw.js.object_store(names.OBJ_BLOBS)
    return gw.blobs


async def read_blob(gw: Gateway, workspace: str, ref: str) -> bytes:
    """The blob ``ref`` of ``workspace``; NotFoundError when that workspace has none (the
    same answer whether or not another workspace stored the same bytes)."""
    try:
        res = await (await blob_store(gw)).get(names.blob_name(workspace, ref))
    except nats.js.errors.NotFoundError:
        raise NotFoundError(f"blob {ref} not found (blobs are kept as long as results)") from None
    return res.data or b""


async def store_blob(gw: Gateway, workspace: str, data: bytes) -> str:
    """Store ``data`` as a blob of ``workspace``; returns its reference (sha256)."""
    if len(data) > MAX_PAYLOAD:
        raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD} "
                                   f"byte ({MAX_PAYLOAD >> 20} MiB) limit")
    ref = hashlib.sha256(data).hexdigest()
    if not await blob_exists(gw, workspace, ref):
        await (await blob_store(gw)).put(names.blob_name(workspace, ref), data)
    return ref


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
