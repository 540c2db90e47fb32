"""Health and cluster status (tokens: api_tokens.py)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from fastapi import APIRouter, Depends

from burst_core import bus, names
from burst_core.schemas import (
    AgentHeartbeatDecoder,
    AgentRecordDecoder,
)
from burst_core.service import live_services
from burst_gateway.auth import Principal, admin
from burst_gateway.state import GatewayDep

router = APIRouter()


@router.get("/healthz", tags=["cluster"])
async def healthz(gw: GatewayDep) -> dict[str, Any]:
    """Liveness of this gateway and its NATS connection (no auth)."""
    return {"ok": gw.nc.is_connected, "nats": gw.nc.is_connected}


@router.get("/v1/status", tags=["cluster"])
async def status(gw: GatewayDep, p: Principal = Depends(admin)) -> dict[str, Any]:
    """Services with their last liveness record, and agents with their resources
    (operator tokens only: it shows every workspace's containers and the hosts)."""
    now = time.time()
    services: list[dict[str, Any]] = []
    for hb in await live_services(gw.js, gw.settings.service_heartbeat_timeout):
        services.append({"service": hb.service, "instance": hb.instance,
                         "age": round(now - hb.at, 3), "uptime": round(now - hb.started_at, 1),
                         **({"info": hb.info} if hb.info else {})})
    beats = {k: AgentHeartbeatDecoder.decode(v)
             for k, v in (await bus.kv_items(gw.js, names.KV_HEARTBEATS)).items()}
    agents: list[dict[str, Any]] = []
    for key, raw in (await bus.kv_items(gw.js, names.KV_AGENTS)).items():
        rec = AgentRecordDecoder.decode(raw)
        beat = beats.get(key)
        agents.append({
            "agent_id": rec.agent_id, "hostname": rec.hostname,
            "age": round(now - beat.at, 3) if beat else None,
            "cpu": rec.cpu, "memory_mb": rec.memory_mb,
            "gpus": [msgspec.to_builtins(g) for g in rec.gpus],
            "gpus_declared": rec.gpus_declared, "spot": rec.spot, "runtime": rec.runtime,
            "containers": len(beat.containers) if beat else 0,
            "allocations": len(rec.allocations),
        })
    services.sort(key=lambda s: (s["service"], s["instance"]))
    agents.sort(key=lambda a: a["agent_id"])
    return {"workspace": p.workspace, "services": services, "agents": agents}
