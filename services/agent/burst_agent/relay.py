"""The platform relay: operations user code asks of the platform from inside a
container (Dict and Queue operations, and calls: api_relay.py), answered in the
container's workspace.

Invariant: every request gets exactly one response frame, an error one included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from burst import wire
from burst.exception import Error as BurstError
from burst.exception import InvalidError
from burst_core.objects import Objects

VolumeHandler = Callable[[wire.VolumeRequest], Awaitable[wire.VolumeResponse]]


async def answer(objects: Objects, workspace: str, req: wire.PlatformRequest,
                 log: Any, calls: Callable[[wire.ApiRequest], Awaitable[wire.ApiResponse]]
                 | None = None, volume: VolumeHandler | None = None) -> wire.PlatformResponse:
    """The response to one platform request (errors are answers, never raised);
    ``calls`` answers the SDK's client requests (see api_relay.py), ``volume`` volume
    operations (the container's own mounts' commit and reload included)."""
    try:
        if req.kind == "api":
            if calls is None:
                raise InvalidError("calls are not available here")
            api = wire.api_request_decoder.decode(req.body)
            resp: msgspec.Struct = await calls(api)
        elif req.kind == "volume":
            if volume is None:
                raise InvalidError("volumes are not available here")
            resp = await volume(wire.volume_request_decoder.decode(req.body))
        elif req.kind == "dict":
            body = wire.dict_request_decoder.decode(req.body)
            resp = await objects.dict_op(workspace, body)
        else:
            resp = await objects.queue_op(workspace, wire.queue_request_decoder.decode(req.body))
        return wire.PlatformResponse(req_id=req.req_id, body=msgspec.msgpack.encode(resp))
    except BurstError as e:
        return wire.PlatformResponse(req_id=req.req_id, error_type=e.type,
                                      error_message=str(e))
    except Exception as e:
        log.warning("platform_request_failed", kind=req.kind, error=repr(e))
        return wire.PlatformResponse(req_id=req.req_id, error_type="Internal",
                                      error_message=f"{req.kind} operation failed: {e}")
