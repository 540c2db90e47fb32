"""Tokens and workspaces.

An operator token makes tokens for any workspace and sees them all; a workspace's admin
token makes tokens (up to its own scope) for its workspace and sees and revokes only
those."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from burst.exception import InvalidError, PermissionDeniedError
from burst_gateway import auth
from burst_gateway.auth import Principal, principal
from burst_gateway.state import GatewayDep

router = APIRouter()


class TokenCreate(BaseModel):
    workspace: str = Field(description="Workspace the new token belongs to (it must exist).")
    scope: str = Field(default="", description=(
        f"One of {', '.join(auth.SCOPES)} (weakest first); default admin."))
    name: str = Field(default="", description="A label for the token.")
    expires_in: float | None = Field(default=None, description=(
        "Seconds until the token stops working; none: never."))
    admin: bool = Field(default=False, description="Same as scope operator (older clients).")
    proxy_auth: bool = Field(default=False, description=(
        "A proxy-auth token for web endpoints with requires_proxy_auth=True (a key id and "
        "a secret, sent as the Burst-Key and Burst-Secret headers), not an API token."))


def _expiry(expires_in: float | None) -> float:
    if expires_in is None:
        return 0.0
    if not (0 < expires_in <= auth.MAX_EXPIRY):  # NaN fails this too
        raise InvalidError(f"expires_in={expires_in} is outside 0 (exclusive) .. "
                           f"{auth.MAX_EXPIRY:.0f} seconds (ten years)")
    return time.time() + expires_in


@router.post("/v1/tokens", tags=["tokens"], status_code=201)
async def create_token(body: TokenCreate, gw: GatewayDep,
                       p: Principal = Depends(principal)) -> dict[str, Any]:
    """Create a token (shown once). Operators: for any workspace, any scope; a
    workspace's admin: for its own workspace, up to scope admin."""
    if body.admin and body.scope not in ("", auth.OPERATOR):
        raise InvalidError(f"admin=true is scope 'operator', not {body.scope!r}")
    scope = auth.check_scope(auth.OPERATOR if body.admin else body.scope or "admin")
    if not p.operator:
        if body.workspace != p.workspace:
            raise PermissionDeniedError(
                f"a token of workspace {p.workspace!r} makes tokens for that workspace only "
                f"(not {body.workspace!r}): ask an operator")
        if not auth.covers(p.scope, scope):
            raise PermissionDeniedError(f"a token of scope {p.scope!r} cannot make one of "
                                        f"scope {scope!r}")
    await gw.workspaces.check(body.workspace)
    expires_at = _expiry(body.expires_in)
    if body.proxy_auth:
        if body.admin or body.scope:
            raise InvalidError("a proxy-auth token has no scope: it only opens web endpoints "
                               "with requires_proxy_auth=True")
        key_id, secret = await gw.tokens.create_proxy_auth(
            body.workspace, body.name, expires_at=expires_at, created_by=p.token_id)
        return {"token_id": key_id, "token_secret": secret, "workspace": body.workspace,
                "name": body.name, "expires_at": expires_at or None}
    token, rec = await gw.tokens.create(body.workspace, scope, body.name,
                                        expires_at=expires_at, created_by=p.token_id)
    return {"token": token, "token_id": rec.token_id, "workspace": body.workspace,
            "scope": scope, "name": body.name, "expires_at": expires_at or None}


@router.get("/v1/tokens", tags=["tokens"])
async def list_tokens(gw: GatewayDep, p: Principal = Depends(principal),
                      workspace: str | None = Query(None, description=(
                          "Only this workspace's (operators see every workspace's)."))
                      ) -> dict[str, Any]:
    """Tokens (never their secrets): id, workspace, scope, kind, created, last used,
    expiry and status."""
    if not p.operator:
        if workspace not in (None, p.workspace):
            raise PermissionDeniedError(f"a token of workspace {p.workspace!r} lists that "
                                        f"workspace's tokens only (not {workspace!r})")
        workspace = p.workspace
    elif workspace is not None:
        await gw.workspaces.check(workspace)
    now = time.time()
    out = []
    for key, rec in (await gw.tokens.records()).items():
        if workspace is not None and rec.workspace != workspace:
            continue
        out.append({
            "token_id": auth.token_id_of(key, rec), "workspace": rec.workspace,
            "scope": "" if rec.kind else auth.scope_of(rec),
            "kind": rec.kind or "api", "name": rec.name, "created_at": rec.created_at,
            "created_by": rec.created_by, "last_used_at": rec.last_used_at or None,
            "expires_at": rec.expires_at or None, "revoked_at": rec.revoked_at or None,
            "status": auth.status_of(rec, now),
        })
    out.sort(key=lambda t: (t["workspace"], t["created_at"]))
    return {"tokens": out}


@router.delete("/v1/tokens/{token_id}", tags=["tokens"])
async def revoke_token(token_id: str, gw: GatewayDep,
                       p: Principal = Depends(principal)) -> dict[str, Any]:
    """Revoke a token: every gateway refuses it within ``BURST_TOKEN_CACHE_TTL`` seconds."""
    rec = await gw.tokens.revoke(token_id, p)
    return {"token_id": token_id, "workspace": rec.workspace, "revoked": True}


class WorkspaceCreate(BaseModel):
    name: str = Field(description="The new workspace's name.")


@router.get("/v1/workspaces", tags=["tokens"])
async def list_workspaces(gw: GatewayDep, p: Principal = Depends(principal)) -> dict[str, Any]:
    """Workspaces: every one for an operator; a workspace's token sees its own."""
    return {"workspaces": [{"name": w.name, "created_at": w.created_at}
                           for w in await gw.workspaces.all()
                           if p.operator or w.name == p.workspace]}


@router.post("/v1/workspaces", tags=["tokens"], status_code=201)
async def create_workspace(body: WorkspaceCreate, gw: GatewayDep,
                           p: Principal = Depends(principal)) -> dict[str, Any]:
    """Create a workspace (operators); then ``burst token create --workspace NAME``."""
    await gw.workspaces.create(body.name, created_by=p.token_id)
    return {"name": body.name, "created": True}
