"""Secrets of a workspace: create (or replace), list, delete; rotate the master key.

Answers name secrets and their keys, never values (``secret_store.public``). Another
workspace's secret is answered 404, as one that does not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from burst_gateway.auth import Principal, admin, principal
from burst_gateway.secret_store import SecretStore, public
from burst_gateway.state import Gateway, GatewayDep
from burst_gateway.validate import check_text

router = APIRouter()


class SecretIn(BaseModel):
    name: str = Field(..., description="Letters, digits, '-' and '_' (1-63 characters).")
    values: dict[str, str] = Field(..., description="Environment variable name -> value.")
    force: bool = Field(False, description="Replace the values of an existing secret.")

    def __repr__(self) -> str:  # never the values, in a traceback or a log
        return f"SecretIn(name={self.name!r}, keys={sorted(self.values)!r})"

    __str__ = __repr__


def _store(gw: Gateway) -> SecretStore:
    assert gw.secrets is not None
    return gw.secrets


@router.post("/v1/secrets", tags=["secrets"], status_code=201)
async def create_secret(gw: GatewayDep, body: SecretIn,
                        p: Principal = Depends(principal)) -> dict[str, Any]:
    """Store a secret (409 if it exists, unless ``force``); answers its name and keys."""
    check_text("name", body.name)
    for k, v in body.values.items():
        check_text(f"key {k!r}", k)
        check_text(f"the value of {k}", v)
    rec = await _store(gw).put(p.workspace, body.name, body.values, body.force)
    return public(rec)


@router.get("/v1/secrets", tags=["secrets"])
async def list_secrets(gw: GatewayDep, p: Principal = Depends(principal)) -> dict[str, Any]:
    """The workspace's secrets: names, key names, created and updated times."""
    return {"workspace": p.workspace,
            "secrets": [public(r) for r in await _store(gw).list_of(p.workspace)]}


@router.get("/v1/secrets/{name}", tags=["secrets"])
async def get_secret(name: str, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """One secret's name and keys (404 if the workspace has none of that name)."""
    rec, _ = await _store(gw).get(p.workspace, name)
    return public(rec)


@router.delete("/v1/secrets/{name}", tags=["secrets"])
async def delete_secret(name: str, gw: GatewayDep,
                        p: Principal = Depends(principal)) -> dict[str, Any]:
    await _store(gw).delete(p.workspace, name)
    return {"name": name, "deleted": True}


@router.post("/v1/secrets/rotate-key", tags=["secrets"])
async def rotate_key(gw: GatewayDep, p: Principal = Depends(admin)) -> dict[str, Any]:
    """Re-read the master key ring and re-wrap every data key (and reseal webhook signing
    secrets) under its newest key; older keys may leave the ring afterwards. Operator
    token only."""
    return await _store(gw).rotate(gw.deployments_kv)
