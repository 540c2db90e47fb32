"""Client heartbeats: a `burst run` process or a script's ``with app.run():`` keeps its
ephemeral apps (and ephemeral Dicts and Queues) alive by beating here.

Each beat is written to KV ``burst_clients``, not kept in this process, so any gateway
takes the next one and a gateway restart loses nothing; the scheduler's reaper stops what
a client owns once its beats stop for ``client_timeout`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from burst.exception import InvalidError
from burst.wire import check_client_id
from burst_core import bus, names
from burst_core.schemas import ClientHeartbeat, encode
from burst_gateway.auth import Principal, principal
from burst_gateway.state import GatewayDep

router = APIRouter()


def _client_id(client_id: str) -> str:
    try:
        return check_client_id(client_id)
    except ValueError as e:
        raise InvalidError(str(e)) from None


@router.put("/v1/clients/{client_id}/heartbeat", tags=["apps"])
async def heartbeat(client_id: str, gw: GatewayDep, seq: int = 0,
                    p: Principal = Depends(principal)) -> dict[str, Any]:
    """Record that the client is alive (``seq``: its beat count, for logs)."""
    _client_id(client_id)
    if gw.clients_kv is None:
        gw.clients_kv = await bus.retrying(lambda: gw.js.key_value(names.KV_CLIENTS))
    kv = gw.clients_kv
    now = time.time()
    beat = encode(ClientHeartbeat(workspace=p.workspace, client_id=client_id, at=now, seq=seq))
    # Through a NATS leader election (the client's next beat may come first: no harm).
    await bus.retrying(lambda: kv.put(names.client_key(p.workspace, client_id), beat))
    return {"client_id": client_id, "at": now}


@router.delete("/v1/clients/{client_id}", tags=["apps"])
async def gone(client_id: str, gw: GatewayDep,
               p: Principal = Depends(principal)) -> dict[str, Any]:
    """The client is leaving: its heartbeat record goes (what it still owns is then
    reaped after the deadline, as for a client that died)."""
    _client_id(client_id)
    kv = await gw.js.key_value(names.KV_CLIENTS)
    await kv.delete(names.client_key(p.workspace, client_id))
    return {"client_id": client_id, "removed": True}
