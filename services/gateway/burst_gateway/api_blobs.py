"""Blobs: call arguments and results above the inline limit, in the object store."""

from __future__ import annotations

import hashlib
from typing import Any

import nats.js.errors
from fastapi import APIRouter, Depends, Request, Response

from burst._protocol import MAX_PAYLOAD
from burst.exception import InvalidError, NotFoundError, PayloadTooLargeError
from burst_core import names
from burst_gateway.auth import Principal, principal

router = APIRouter()


def check_ref(ref: str) -> str:
    if len(ref) != 64 or any(c not in "0123456789abcdef" for c in ref):
        raise InvalidError(f"invalid blob reference {ref!r}: expected a sha256 (64 hex digits)")
    return ref


async def blob_exists(gw: Any, ref: str) -> bool:
    try:
        await (await blob_store(gw)).get_info(ref)
        return True
    except nats.js.errors.NotFoundError:
        return False


async def blob_store(gw: Any) -> Any:
    if getattr(gw, "blobs", None) is None:
        gw.blobs = await gw.js.object_store(names.OBJ_BLOBS)
    return gw.blobs


async def store_blob(gw: Any, data: bytes) -> str:
    """Store ``data`` as a blob; returns its reference (sha256)."""
    if len(data) > MAX_PAYLOAD:
        raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD} "
                                   f"byte ({MAX_PAYLOAD >> 20} MiB) limit")
    ref = hashlib.sha256(data).hexdigest()
    if not await blob_exists(gw, ref):
        await (await blob_store(gw)).put(ref, data)
    return ref


@router.put("/v1/blobs/{ref}", tags=["calls"], status_code=201)
async def put_blob(ref: str, request: Request, _: Principal = Depends(principal)) -> dict[str, Any]:
    """Store a payload above the inline limit under its sha256 (kept as long as results)."""
    gw = request.app.state.gw
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
    if not await blob_exists(gw, ref):
        await (await blob_store(gw)).put(ref, body)
    return {"ref": ref, "size": len(body)}


@router.get("/v1/blobs/{ref}", tags=["calls"])
async def get_blob(ref: str, request: Request, _: Principal = Depends(principal)) -> Response:
    """A stored payload (a large argument or result), by its sha256."""
    check_ref(ref)
    try:
        res = await (await blob_store(request.app.state.gw)).get(ref)
    except nats.js.errors.NotFoundError:
        raise NotFoundError(f"blob {ref} not found (blobs are kept as long as results)") from None
    return Response(res.data or b"", media_type="application/octet-stream")
