"""Bearer tokens. A token maps to a workspace; only its sha256 is stored (KV ``burst_tokens``)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from burst.exception import AuthError, PermissionDeniedError
from burst_core import bus, names
from burst_core.schemas import TokenRecord, TokenRecordDecoder, encode

TOKEN_PREFIX = "bst_"
#: Proxy-auth tokens (web endpoints): a key id and a secret, as Modal's ``wk-``/``ws-``.
PROXY_KEY_PREFIX = "wk-"
PROXY_SECRET_PREFIX = "ws-"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    workspace: str
    admin: bool
    token_name: str = ""


class TokenStore:
    def __init__(self, kv: object, cache_ttl: float) -> None:
        self.kv = kv
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._proxy_cache: dict[str, tuple[float, TokenRecord | None]] = {}

    async def create(self, workspace: str, name: str = "", admin: bool = False,
                     token: str | None = None) -> str:
        token = token or new_token()
        rec = TokenRecord(workspace=workspace, name=name, admin=admin, created_at=time.time())
        await self.kv.put(hash_token(token), encode(rec))  # type: ignore[attr-defined]
        return token

    async def create_proxy_auth(self, workspace: str, name: str = "") -> tuple[str, str]:
        """A proxy-auth token for web endpoints with ``requires_proxy_auth=True``: its key
        id and secret (sent as the ``Burst-Key``/``Burst-Secret`` headers)."""
        key_id = PROXY_KEY_PREFIX + secrets.token_urlsafe(16)
        secret = PROXY_SECRET_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(workspace=workspace, name=name, created_at=time.time(),
                          kind="proxy_auth", secret_hash=hash_token(secret))
        await self.kv.put(names.proxy_auth_key(key_id), encode(rec))  # type: ignore[attr-defined]
        return key_id, secret

    async def proxy_auth(self, key_id: str, secret: str) -> str | None:
        """The workspace of a valid proxy-auth key and secret, else None."""
        if not key_id or not secret:
            return None
        now = time.monotonic()
        hit = self._proxy_cache.get(key_id)
        if hit is None or hit[0] <= now:
            raw, _ = await bus.kv_get(self.kv, names.proxy_auth_key(key_id))  # type: ignore[arg-type]
            rec = TokenRecordDecoder.decode(raw) if raw is not None else None
            if len(self._proxy_cache) > 10_000:
                self._proxy_cache.clear()
            hit = self._proxy_cache[key_id] = (now + self.cache_ttl, rec)
        rec = hit[1]
        if rec is None or rec.kind != "proxy_auth" or not hmac.compare_digest(
                rec.secret_hash, hash_token(secret)):
            return None
        return rec.workspace

    async def ensure_hash(self, token_hash: str, workspace: str) -> None:
        """Store the bootstrap admin token's record (given only its hash) if missing."""
        cur, _ = await bus.kv_get(self.kv, token_hash)  # type: ignore[arg-type]
        if cur is None:
            rec = TokenRecord(workspace=workspace, name="admin", admin=True, created_at=time.time())
            await self.kv.put(token_hash, encode(rec))  # type: ignore[attr-defined]

    async def lookup(self, token: str) -> Principal | None:
        # Cached by the token itself (this process reads it in every request anyway):
        # a call in the cache's lifetime makes no hash.
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit and hit[0] > now:
            return hit[1]
        raw, _ = await bus.kv_get(self.kv, hash_token(token))  # type: ignore[arg-type]
        principal = None
        if raw is not None:
            rec = TokenRecordDecoder.decode(raw)
            if not rec.kind:  # an API token (a proxy-auth token is never one)
                principal = Principal(workspace=rec.workspace, admin=rec.admin,
                                      token_name=rec.name)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + self.cache_ttl, principal)
        return principal


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller's workspace from ``Authorization: Bearer <token>``."""
    return await principal_of(request.app.state.gw.tokens,
                              request.headers.get("authorization", ""))


async def principal_of(tokens: TokenStore, header: str) -> Principal:
    """The caller's workspace from an ``Authorization`` header's value."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing token: send 'Authorization: Bearer <token>' "
                        "(run `burst up`, or set BURST_TOKEN)")
    p = await tokens.lookup(token.strip())
    if p is None:
        raise AuthError("invalid token: it is not known to this cluster")
    return p


#: The scope of operator tokens: the token ``burst up`` writes to profile.json, and
#: tokens made with ``burst token create --admin``. They make tokens for any workspace
#: and see cluster-wide views (every workspace's containers, the hosts).
OPERATOR_SCOPE = "admin"


async def admin(request: Request) -> Principal:
    """FastAPI dependency: an operator token (scope ``admin``), else 403 naming the scope."""
    p = await principal(request)
    if not p.admin:
        raise PermissionDeniedError(
            f"{request.method} {request.url.path} needs an operator token (scope "
            f"{OPERATOR_SCOPE!r}: the token `burst up` writes to profile.json, or one made "
            f"with `burst token create --admin`); this token is for workspace "
            f"{p.workspace!r} only (its own apps: `burst app list`, `burst app status APP`)")
    return p


def is_operator(p: Principal) -> bool:
    """Whether ``p`` sees cluster-wide figures: agents, GPUs, every workspace's
    containers. (One place to switch to a dedicated ``operator`` scope.)"""
    return p.admin


def require_exec(p: Principal, what: str) -> None:
    """``container exec`` and ``burst shell`` read a container's secrets: they need a
    token that may deploy (today every API token of the workspace, and operator
    tokens; switch to the ``deploy``/``admin`` scopes here once tokens carry scopes)."""
    if not p.workspace:
        raise PermissionDeniedError(f"{what} needs a deploy or admin token")
