"""Bearer tokens and workspaces. A token maps to a workspace and a scope; only its sha256
is stored (KV ``burst_tokens``). Which scope each route needs is in scopes.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
from fastapi import Request

from burst.exception import (
    AuthError,
    ConflictError,
    InvalidError,
    NotFoundError,
    PermissionDeniedError,
)
from burst_core import bus, logs, names
from burst_core.schemas import (
    TokenRecord,
    TokenRecordDecoder,
    WorkspaceRecord,
    WorkspaceRecordDecoder,
    encode,
)

log = logs.get("burst.gateway.auth")

TOKEN_PREFIX = "bst_"
TOKEN_ID_PREFIX = "tk-"
#: Proxy-auth tokens (web endpoints): a key id and a secret, as Modal's ``wk-``/``ws-``.
PROXY_KEY_PREFIX = "wk-"
PROXY_SECRET_PREFIX = "ws-"

#: Scopes, weakest first; each allows what the ones before it allow.
#: read: reads the workspace's apps, calls, logs, schedules, budgets, billing;
#: invoke: also calls functions (and Dicts, Queues), cancels calls;
#: deploy: also deploys, stops and rolls back apps, pauses schedules;
#: admin: everything in its workspace (its tokens, secrets, budgets, webhooks);
#: operator: the cluster (tokens for any workspace, workspaces, agents, status).
SCOPES = ("read", "invoke", "deploy", "admin", "operator")
OPERATOR = "operator"
#: The longest ``expires_in`` a token may have (ten years).
MAX_EXPIRY = 10 * 365 * 86400.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def scope_of(rec: TokenRecord) -> str:
    """A record's scope (records from before scopes: ``admin`` is the operator)."""
    return rec.scope or (OPERATOR if rec.admin else "admin")


def covers(have: str, need: str) -> bool:
    """Whether a token of scope ``have`` may do what needs ``need``."""
    return SCOPES.index(have) >= SCOPES.index(need)


def token_id_of(key: str, rec: TokenRecord) -> str:
    """The id ``burst token list`` shows (records from before ids: from their key)."""
    if rec.token_id:
        return rec.token_id
    return TOKEN_ID_PREFIX + key.removeprefix("proxy.")[:12]


def status_of(rec: TokenRecord, now: float) -> str:
    if rec.revoked_at:
        return "revoked"
    if rec.expires_at and rec.expires_at <= now:
        return "expired"
    return "active"


@dataclass(frozen=True)
class Principal:
    workspace: str
    scope: str
    token_id: str = ""
    token_name: str = ""

    @property
    def operator(self) -> bool:
        return self.scope == OPERATOR


@dataclass
class _Cached:
    until: float  # monotonic
    rec: TokenRecord | None
    principal: Principal | None


class TokenStore:
    """API and proxy-auth tokens. A known token's lookup is cached for ``cache_ttl``
    seconds, so a revoked token stops working on every gateway within that time; expiry is
    checked on every request. An unknown token is looked up again at every request."""

    def __init__(self, kv: object, cache_ttl: float, use_interval: float = 60.0) -> None:
        self.kv = kv
        self.cache_ttl = cache_ttl
        self.use_interval = use_interval
        self._cache: dict[str, _Cached] = {}
        self._proxy_cache: dict[str, tuple[float, TokenRecord | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, workspace: str, scope: str = "admin", name: str = "",
                     expires_at: float = 0.0, created_by: str = "",
                     token: str | None = None, bootstrap: bool = False) -> tuple[str, TokenRecord]:
        token = token or new_token()
        rec = TokenRecord(workspace=workspace, name=name, created_at=time.time(),
                          scope=check_scope(scope),
                          token_id=TOKEN_ID_PREFIX + secrets.token_hex(6),
                          expires_at=expires_at, created_by=created_by, bootstrap=bootstrap)
        await self.kv.put(hash_token(token), encode(rec))  # type: ignore[attr-defined]
        return token, rec

    async def create_proxy_auth(self, workspace: str, name: str = "", expires_at: float = 0.0,
                                created_by: str = "") -> tuple[str, str]:
        """A proxy-auth token for web endpoints with ``requires_proxy_auth=True``: its key
        id and secret (sent as the ``Burst-Key``/``Burst-Secret`` headers)."""
        key_id = PROXY_KEY_PREFIX + secrets.token_urlsafe(16)
        secret = PROXY_SECRET_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(workspace=workspace, name=name, created_at=time.time(),
                          kind="proxy_auth", secret_hash=hash_token(secret), token_id=key_id,
                          expires_at=expires_at, created_by=created_by)
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
        if rec is None or rec.kind != "proxy_auth" or status_of(rec, time.time()) != "active" \
                or not hmac.compare_digest(rec.secret_hash, hash_token(secret)):
            return None
        return rec.workspace

    async def ensure_bootstrap(self, token_hash: str, workspace: str) -> int:
        """Store the operator token ``burst up`` made (given only its hash) if missing, and
        revoke the ones earlier ``burst up`` runs made with other hashes: one stays valid.
        Returns how many were revoked."""
        cur, _ = await bus.kv_get(self.kv, token_hash)  # type: ignore[arg-type]
        if cur is None:
            rec = TokenRecord(workspace=workspace, name="admin", scope=OPERATOR,
                              created_at=time.time(), bootstrap=True,
                              token_id=TOKEN_ID_PREFIX + secrets.token_hex(6))
            await self.kv.put(token_hash, encode(rec))  # type: ignore[attr-defined]
        revoked = 0
        for key, rec in (await self.records()).items():
            # (Records from before the bootstrap flag: the name and scope it gave them.)
            was_bootstrap = rec.bootstrap or (not rec.token_id and rec.admin
                                              and rec.name == "admin")
            if key != token_hash and was_bootstrap and not rec.revoked_at:
                if await self._revoke_key(key):
                    revoked += 1
        return revoked

    async def records(self) -> dict[str, TokenRecord]:
        """Every token record by its key (API and proxy-auth tokens)."""
        out: dict[str, TokenRecord] = {}
        for key, raw in (await bus.kv_values(self.kv)).items():  # type: ignore[arg-type]
            try:
                out[key] = TokenRecordDecoder.decode(raw)
            except msgspec.DecodeError:
                continue
        return out

    async def revoke(self, token_id: str, by: Principal) -> TokenRecord:
        """Revoke the token ``token_id`` (one of the caller's workspace, unless the caller
        is an operator); NotFoundError otherwise."""
        for key, rec in (await self.records()).items():
            if token_id_of(key, rec) != token_id:
                continue
            if not by.operator and rec.workspace != by.workspace:
                break
            await self._revoke_key(key)
            self._cache.clear()
            self._proxy_cache.clear()
            return rec
        raise NotFoundError(f"token {token_id!r} not found in workspace {by.workspace!r} "
                            "(see `burst token list`)")

    async def _revoke_key(self, key: str) -> bool:
        now = time.time()

        def mutate(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            rec = TokenRecordDecoder.decode(raw)
            if rec.revoked_at:
                return None
            return encode(msgspec.structs.replace(rec, revoked_at=now))

        new, _ = await bus.kv_cas(self.kv, key, mutate)  # type: ignore[arg-type]
        return new is not None

    async def lookup(self, token: str) -> tuple[Principal | None, str]:
        """The principal of a working token, else None and why not ("unknown",
        "revoked", "expired")."""
        # Cached by the token itself (this process reads it in every request anyway):
        # a call in the cache's lifetime makes no hash.
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is None or hit.until <= now:
            key = hash_token(token)
            raw, rev = await bus.kv_get(self.kv, key)  # type: ignore[arg-type]
            rec = TokenRecordDecoder.decode(raw) if raw is not None else None
            if rec is not None and rec.kind:  # a proxy-auth token is never an API token
                rec = None
            if len(self._cache) > 10_000:
                self._cache.clear()
            p = None if rec is None else Principal(
                workspace=rec.workspace, scope=scope_of(rec), token_id=token_id_of(key, rec),
                token_name=rec.name)
            hit = _Cached(now + self.cache_ttl, rec, p)
            # An unknown token is not remembered: one stored meanwhile (or misread once,
            # as right after a nats-server restart) works at the next request.
            if rec is not None:
                self._cache[token] = hit
            if rec is not None and time.time() - rec.last_used_at >= self.use_interval:
                self._spawn(self._used(key, rec, rev))
        if hit.rec is None or hit.principal is None:
            return None, "unknown"
        state = status_of(hit.rec, time.time())
        if state != "active":
            return None, state
        return hit.principal, "active"

    async def _used(self, key: str, rec: TokenRecord, rev: int) -> None:
        """Record the token's use; a concurrent change (a revoke) wins over it."""
        try:
            await self.kv.update(  # type: ignore[attr-defined]
                key, encode(msgspec.structs.replace(rec, last_used_at=time.time())), last=rev)
        except Exception:
            pass

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Workspaces:
    """The cluster's workspaces (KV ``burst_workspaces``)."""

    def __init__(self, kv: object) -> None:
        self.kv = kv

    async def exists(self, name: str) -> bool:
        raw, _ = await bus.kv_get(self.kv, name)  # type: ignore[arg-type]
        return raw is not None

    async def create(self, name: str, created_by: str = "", exist_ok: bool = False) -> bool:
        """Create workspace ``name``; ConflictError if it exists (unless ``exist_ok``).
        Returns whether it was created."""
        try:
            names.check_ident("workspace", name)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        rec = WorkspaceRecord(name=name, created_at=time.time(), created_by=created_by)
        try:
            await self.kv.create(name, encode(rec))  # type: ignore[attr-defined]
            return True
        except Exception as e:
            if not await self.exists(name):
                raise
            if exist_ok:
                return False
            raise ConflictError(f"workspace {name!r} already exists") from e

    async def all(self) -> list[WorkspaceRecord]:
        out = [WorkspaceRecordDecoder.decode(raw)
               for raw in (await bus.kv_values(self.kv)).values()]  # type: ignore[arg-type]
        return sorted(out, key=lambda w: w.name)

    async def check(self, name: str) -> None:
        """NotFoundError naming how to make it, for a workspace that does not exist."""
        try:
            names.check_ident("workspace", name)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        if not await self.exists(name):
            raise NotFoundError(f"workspace {name!r} does not exist: create it with "
                                f"`burst workspace create {name}` (see `burst workspace list`)")


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller from ``Authorization: Bearer <token>`` (the scope
    check of scopes.py already found it; this reads what it found)."""
    p: Principal | None = getattr(request.state, "principal", None)
    if p is not None:
        return p
    return await principal_of(request.app.state.gw.tokens,
                              request.headers.get("authorization", ""))


async def principal_of(tokens: TokenStore, header: str) -> Principal:
    """The caller from an ``Authorization`` header's value."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing token: send 'Authorization: Bearer <token>' "
                        "(run `burst up`, or set BURST_TOKEN)")
    p, why = await tokens.lookup(token.strip())
    if p is None:
        if why == "unknown":
            raise AuthError("invalid token: it is not known to this cluster")
        raise AuthError(f"invalid token: it was {why} (make a new one with "
                        "`burst token create`)")
    return p


async def admin(request: Request) -> Principal:
    """FastAPI dependency: an operator token (scopes.py declares the same for every route
    that uses it; this stays as a second lock)."""
    p = await principal(request)
    if not p.operator:
        raise PermissionDeniedError(denied(request.method, request.url.path, OPERATOR, p))
    return p


def denied(method: str, path: str, need: str, p: Principal) -> str:
    """The 403 message: what the route needs and what this token is."""
    what = ("an operator token (scope 'operator': the token `burst up` writes to "
            "profile.json, or one made with `burst token create --scope operator`)"
            if need == OPERATOR else
            f"a token of scope {need!r} or above ({', '.join(SCOPES[SCOPES.index(need):])})")
    return (f"{method} {path} needs {what}; this token has scope {p.scope!r} in workspace "
            f"{p.workspace!r}")


def is_operator(p: Principal) -> bool:
    """Whether ``p`` sees cluster-wide figures: agents, GPUs, services, every
    workspace's containers and figures (``/metrics``, ``burst container list``)."""
    return covers(p.scope, OPERATOR)


def require_exec(p: Principal, what: str) -> None:
    """``container exec`` and ``burst shell`` read a container's secrets: a deploy scope
    or above (the route table says so too; this keeps the rule beside the code)."""
    if not covers(p.scope, "deploy"):
        raise PermissionDeniedError(f"{what} needs a token of scope 'deploy' or above "
                                    "(it can read the container's secrets); this token has "
                                    f"scope {p.scope!r}")
