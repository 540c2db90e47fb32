"""Agents: what each machine offers and runs, and spot preemption (a reclaim notice)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from burst.exception import InvalidError, NotFoundError
from burst_core import bus, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentHeartbeatDecoder,
    AgentRecord,
    AgentRecordDecoder,
    PreemptAgent,
    encode,
)
from burst_gateway.auth import Principal, admin
from burst_gateway.state import GatewayDep

router = APIRouter()


def agent_view(rec: AgentRecord, hb: AgentHeartbeat | None, now: float) -> dict[str, Any]:
    """One agent as the API shows it: capacity, what is claimed, what it reports running."""
    taken = {i for a in rec.allocations.values() for i in a.gpu_indices}
    if rec.lost_at:
        state = "lost"
    elif rec.draining:
        state = rec.drain_reason or "draining"
    else:
        state = "ready"
    return {
        "agent_id": rec.agent_id,
        "hostname": rec.hostname,
        "state": state,
        "spot": rec.spot,
        "capacity": "spot" if rec.spot else "on-demand",
        "runtime": rec.runtime,
        "cpu": rec.cpu,
        "memory_mb": rec.memory_mb,
        "cpu_claimed": round(sum(a.resources.cpu for a in rec.allocations.values()), 3),
        "memory_mb_claimed": sum(a.resources.memory_mb for a in rec.allocations.values()),
        "gpus": [{**msgspec.to_builtins(g), "free": g.index not in taken} for g in rec.gpus],
        "gpus_declared": rec.gpus_declared,
        "heartbeat_age": round(now - hb.at, 3) if hb else None,
        "lost_at": rec.lost_at or None,
        "started_at": rec.started_at,
        "containers": [
            {"container_id": c.container_id, "function": c.fn_key, "state": c.state,
             "in_flight": c.in_flight}
            for c in (hb.containers if hb else [])
        ],
        "allocations": len(rec.allocations),
    }


@router.get("/v1/agents", tags=["agents"])
async def list_agents(gw: GatewayDep, _: Principal = Depends(admin)) -> dict[str, Any]:
    """Every agent: resources, GPUs (real or declared), containers, spot or on-demand
    (operator tokens only: every workspace's containers and the hosts)."""
    js = gw.js
    now = time.time()
    beats = {k: AgentHeartbeatDecoder.decode(v)
             for k, v in (await bus.kv_items(js, names.KV_HEARTBEATS)).items()}
    agents = [agent_view(AgentRecordDecoder.decode(raw), beats.get(key), now)
              for key, raw in (await bus.kv_items(js, names.KV_AGENTS)).items()]
    agents.sort(key=lambda a: a["agent_id"])
    return {"agents": agents}


@router.post("/v1/agents/{agent_id}/preempt", tags=["agents"], status_code=202)
async def preempt_agent(agent_id: str, gw: GatewayDep,
                        _: Principal = Depends(admin)) -> dict[str, Any]:
    """Stand-in for a cloud's spot reclaim notice (admin only): the agent drains, its
    containers stop (in-flight inputs handed back at once) and are replaced elsewhere."""
    return await _drain(gw, agent_id, leave=False)


class Drain(BaseModel):
    timeout: float | None = Field(default=None, description=(
        "Seconds the inputs running on the agent may take to finish there; what still "
        "runs then is interrupted and runs again elsewhere. Default: the agent's "
        "BURST_DRAIN_TIMEOUT."))


@router.post("/v1/agents/{agent_id}/drain", tags=["agents"], status_code=202)
async def drain_agent(agent_id: str, gw: GatewayDep, body: Drain | None = None,
                      _: Principal = Depends(admin)) -> dict[str, Any]:
    """Take a machine out of the cluster (operator only): nothing more is placed on the
    agent, the inputs running there finish (idle containers stop at once), then it
    deletes its records and exits. What still runs after the timeout is interrupted and
    runs again elsewhere."""
    timeout = body.timeout if body is not None else None
    if timeout is not None and not (0 < timeout < float("inf")):
        raise InvalidError(f"invalid drain timeout {timeout!r}: use a number of seconds "
                           "above 0")
    return await _drain(gw, agent_id, leave=True, timeout=timeout or 0.0)


@router.post("/v1/agents/{agent_id}/revoke", tags=["agents"], status_code=202)
async def revoke_agent(agent_id: str, gw: GatewayDep,
                       _: Principal = Depends(admin)) -> dict[str, Any]:
    """Mark an agent revoked (operator only): nothing more is placed on it. `burst agent
    revoke` then removes its NATS user on the control machine, which cuts it off; what
    it ran runs again elsewhere once it is found lost."""
    try:
        names.check_ident("agent", agent_id)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    kv = await gw.js.key_value(names.KV_AGENTS)
    found = False

    def mark(cur: bytes | None) -> bytes | None:
        nonlocal found
        found = cur is not None
        if cur is None:
            return None
        rec = AgentRecordDecoder.decode(cur)
        if rec.draining and rec.drain_reason == "revoked":
            return None
        rec.draining, rec.drain_reason = True, "revoked"
        return encode(rec)

    await bus.kv_cas(kv, agent_id, mark)
    if not found:
        raise NotFoundError(f"agent {agent_id!r} is not registered")
    return {"agent_id": agent_id, "revoked": True, "at": time.time()}


async def _drain(gw: Any, agent_id: str, leave: bool, timeout: float = 0.0) -> dict[str, Any]:
    try:
        names.check_ident("agent", agent_id)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    js = gw.js
    kv = await js.key_value(names.KV_AGENTS)
    raw, _rev = await bus.kv_get(kv, agent_id)
    if raw is None:
        raise NotFoundError(f"agent {agent_id!r} is not registered")
    now = time.time()
    await bus.publish(js, names.agent_orders_subject(agent_id),
                      encode(PreemptAgent(agent_id=agent_id, at=now, leave=leave, timeout=timeout,
                                          reason="drained" if leave else "preempted")),
                      msg_id=f"preempt-{agent_id}-{now!r}")
    if leave:
        return {"agent_id": agent_id, "drained": True, "at": now, "timeout": timeout or None}
    return {"agent_id": agent_id, "preempted": True, "at": now}
