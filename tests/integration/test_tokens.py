"""Tokens with scopes, expiry and revocation, and workspaces, on two in-process gateways
sharing one NATS (as two gateway replicas do)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from burst.wire import MSGPACK, CallRequest
from burst_core import bus, names
from burst_core.schemas import TokenRecordDecoder
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

OPERATOR = "bst_tokens-test-operator"
CALL = "/v1/apps/tok/functions/f/calls"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def two_gateways(nats_url: str, redis_url: str, tmp_path: Any, **extra: Any
                       ) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    a_cfg = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR, instance="gw-a",
                            **extra)
    b_cfg = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR, instance="gw-b",
                            **extra)
    async with inproc.gateway(a_cfg, "tok") as (a, _), inproc.gateway(b_cfg, "tok") as (b, _):
        yield a, b


async def make(c: httpx.AsyncClient, workspace: str = "default", token: str = OPERATOR,
               **body: Any) -> dict[str, Any]:
    r = await c.post("/v1/tokens", json={"workspace": workspace, **body},
                     headers=bearer(token))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def call(c: httpx.AsyncClient, token: str) -> httpx.Response:
    """The SDK's call request (the fast path)."""
    return await c.post(CALL + "?wait=0", content=msgspec.msgpack.encode(CallRequest(payload=b"x")),
                        headers={**bearer(token), "Content-Type": MSGPACK, "Accept": MSGPACK})


async def test_scopes_are_enforced_on_every_path(nats_url: str, redis_url: str,
                                                 tmp_path: Any) -> None:
    async with two_gateways(nats_url, redis_url, tmp_path) as (a, _):
        read = (await make(a, scope="read"))["token"]
        invoke = (await make(a, scope="invoke"))["token"]
        deploy = (await make(a, scope="deploy"))["token"]
        admin = (await make(a))["token"]
        # read: reads, never calls (fast path and FastAPI's route alike).
        assert (await a.get("/v1/apps", headers=bearer(read))).status_code == 200
        r = await call(a, read)
        assert r.status_code == 403, r.text
        msg = r.json()["error"]["message"]
        assert msg == (f"POST {CALL} needs a token of scope 'invoke' or above (invoke, "
                       "deploy, admin, operator); this token has scope 'read' in workspace "
                       "'default'")
        r = await a.post(CALL, json={"args": [1]}, headers=bearer(read))
        assert r.status_code == 403 and "scope 'invoke'" in r.text
        # invoke: calls and reads its calls; never deploys or stops an app.
        r = await call(a, invoke)
        assert r.status_code == 202, r.text
        call_id = msgspec.msgpack.decode(r.content)["call_id"]
        for t in (invoke, read):
            r = await a.get(f"/v1/calls/{call_id}?wait=0", headers=bearer(t))
            assert r.status_code == 202, r.text
        for method, path in (("POST", "/v1/apps"), ("DELETE", "/v1/apps/tok"),
                             ("PUT", f"/v1/bundles/{'0' * 64}")):
            r = await a.request(method, path, headers=bearer(invoke))
            assert r.status_code == 403 and "scope 'deploy'" in r.text, (path, r.text)
        # deploy: stops apps; no secrets, budgets or tokens (admin), no agents (operator).
        r = await a.put("/v1/budgets/tok", json={"limit": 1.0}, headers=bearer(deploy))
        assert r.status_code == 403 and "scope 'admin'" in r.text
        r = await a.post("/v1/tokens", json={"workspace": "default"}, headers=bearer(deploy))
        assert r.status_code == 403
        r = await a.get("/v1/agents", headers=bearer(admin))
        assert r.status_code == 403 and "needs an operator token (scope 'operator'" in r.text
        assert (await a.get("/v1/agents", headers=bearer(OPERATOR))).status_code == 200
        assert (await a.delete("/v1/apps/tok", headers=bearer(deploy))).status_code == 200


async def test_a_revoked_token_stops_working_on_every_gateway_within_5_s(
        nats_url: str, redis_url: str, tmp_path: Any) -> None:
    async with two_gateways(nats_url, redis_url, tmp_path) as (a, b):
        made = await make(a, name="ci")
        token = made["token"]
        # Both gateways have it in their caches.
        assert (await a.get("/v1/apps", headers=bearer(token))).status_code == 200
        assert (await b.get("/v1/apps", headers=bearer(token))).status_code == 200
        assert (await call(b, token)).status_code == 202
        r = await a.delete(f"/v1/tokens/{made['token_id']}", headers=bearer(OPERATOR))
        assert r.status_code == 200, r.text
        revoked = time.monotonic()
        pending = {"a": a, "b": b}
        gone: dict[str, float] = {}
        while pending and time.monotonic() - revoked < 10:
            for name, c in list(pending.items()):
                r = await c.get("/v1/apps", headers=bearer(token))
                if r.status_code == 401:
                    assert r.json()["error"]["message"] == (
                        "invalid token: it was revoked (make a new one with "
                        "`burst token create`)")
                    assert (await call(c, token)).status_code == 401
                    gone[name] = time.monotonic() - revoked
                    del pending[name]
            await asyncio.sleep(0.1)
        assert not pending, f"still accepted after 10 s by {sorted(pending)}"
        assert max(gone.values()) < 5.0, gone
        listed = (await a.get("/v1/tokens", headers=bearer(OPERATOR))).json()["tokens"]
        [row] = [t for t in listed if t["token_id"] == made["token_id"]]
        assert row["status"] == "revoked" and row["revoked_at"]


async def test_expiry_listing_and_last_use(nats_url: str, redis_url: str,
                                           tmp_path: Any, js: Any) -> None:
    async with two_gateways(nats_url, redis_url, tmp_path) as (a, b):
        short = await make(a, scope="read", expires_in=6.0)
        assert (await b.get("/v1/apps", headers=bearer(short["token"]))).status_code == 200
        await asyncio.sleep(max(0.0, short["expires_at"] - time.time()) + 0.2)
        r = await b.get("/v1/apps", headers=bearer(short["token"]))  # cached, yet refused
        assert r.status_code == 401 and "it was expired" in r.text
        listed = (await a.get("/v1/tokens", headers=bearer(OPERATOR))).json()["tokens"]
        by_id = {t["token_id"]: t for t in listed}
        row = by_id[short["token_id"]]
        assert row["status"] == "expired" and row["scope"] == "read"
        assert row["last_used_at"] is not None and row["workspace"] == "default"
        assert all(set(t) == {"token_id", "workspace", "scope", "kind", "name", "created_at",
                              "created_by", "last_used_at", "expires_at", "revoked_at",
                              "status"} for t in listed)
        assert short["token"] not in str(listed)
        # The bootstrap operator token is listed too, as made by nobody.
        assert [t["scope"] for t in listed if t["created_by"] == ""] == ["operator"]
        # Stored: only the hash (the record has no secret).
        kv = await js.key_value(names.KV_TOKENS)
        raw, _ = await bus.kv_get(kv, hashlib.sha256(short["token"].encode()).hexdigest())
        assert raw is not None and short["token"].encode() not in raw
        assert TokenRecordDecoder.decode(raw).token_id == short["token_id"]


async def test_bad_input_gets_clear_errors(nats_url: str, redis_url: str,
                                           tmp_path: Any) -> None:
    async with two_gateways(nats_url, redis_url, tmp_path) as (a, _):
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"workspace": "default", "scope": "root"}, 400,
             "unknown scope 'root': expected one of read, invoke, deploy, admin, operator"),
            ({"workspace": "default", "expires_in": -5}, 400,
             "expires_in=-5.0 is outside 0 (exclusive)"),
            ({"workspace": "default", "expires_in": 1e12}, 400, "ten years"),
            ({"workspace": "nowhere"}, 404,
             "workspace 'nowhere' does not exist: create it with "
             "`burst workspace create nowhere`"),
            ({"workspace": "Bad Name"}, 400, "'Bad Name'"),
            ({"workspace": "default", "proxy_auth": True, "scope": "read"}, 400,
             "a proxy-auth token has no scope"),
        ]
        for body, status, message in cases:
            r = await a.post("/v1/tokens", json=body, headers=bearer(OPERATOR))
            assert r.status_code == status, (body, r.text)
            assert message in r.json()["error"]["message"], (body, r.text)
        # A tampered token (one character changed) is simply unknown.
        tampered = OPERATOR[:-1] + ("x" if OPERATOR[-1] != "x" else "y")
        r = await a.get("/v1/apps", headers=bearer(tampered))
        assert r.status_code == 401
        assert r.json()["error"]["message"] == "invalid token: it is not known to this cluster"
        assert (await a.delete("/v1/tokens/tk-nope", headers=bearer(OPERATOR))).status_code == 404
        r = await a.get("/v1/tokens?workspace=nowhere", headers=bearer(OPERATOR))
        assert r.status_code == 404 and "workspace 'nowhere' does not exist" in r.text
        r = await a.post("/v1/workspaces", json={"name": "default"}, headers=bearer(OPERATOR))
        assert r.status_code == 409 and "workspace 'default' already exists" in r.text


async def test_workspaces_and_a_workspace_admin(nats_url: str, redis_url: str,
                                                tmp_path: Any) -> None:
    async with two_gateways(nats_url, redis_url, tmp_path) as (a, b):
        for ws in ("team-a", "team-b"):
            r = await a.post("/v1/workspaces", json={"name": ws}, headers=bearer(OPERATOR))
            assert r.status_code == 201, r.text
        admin_a = await make(a, "team-a")
        tb = await make(a, "team-b", scope="read")
        r = await b.get("/v1/workspaces", headers=bearer(OPERATOR))
        assert [w["name"] for w in r.json()["workspaces"]] == ["default", "team-a", "team-b"]
        r = await b.get("/v1/workspaces", headers=bearer(admin_a["token"]))
        assert [w["name"] for w in r.json()["workspaces"]] == ["team-a"]
        # A workspace's admin makes its own workspace's tokens, up to admin.
        made = await make(b, "team-a", token=admin_a["token"], scope="invoke")
        assert made["scope"] == "invoke"
        for body in ({"workspace": "team-b"}, {"workspace": "team-a", "scope": "operator"}):
            r = await b.post("/v1/tokens", json=body, headers=bearer(admin_a["token"]))
            assert r.status_code == 403, r.text
        r = await b.post("/v1/workspaces", json={"name": "x"}, headers=bearer(admin_a["token"]))
        assert r.status_code == 403
        # It lists and revokes only its own workspace's tokens.
        r = await b.get("/v1/tokens", headers=bearer(admin_a["token"]))
        assert {t["workspace"] for t in r.json()["tokens"]} == {"team-a"}
        r = await b.get("/v1/tokens?workspace=team-b", headers=bearer(admin_a["token"]))
        assert r.status_code == 403
        r = await b.delete(f"/v1/tokens/{tb['token_id']}", headers=bearer(admin_a["token"]))
        assert r.status_code == 404 and "not found in workspace 'team-a'" in r.text
        assert (await b.get("/v1/apps", headers=bearer(tb["token"]))).status_code == 200
        r = await b.delete(f"/v1/tokens/{made['token_id']}", headers=bearer(admin_a["token"]))
        assert r.status_code == 200


async def test_a_new_bootstrap_token_revokes_the_one_it_replaces(
        nats_url: str, redis_url: str, tmp_path: Any) -> None:
    first = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR)
    async with inproc.gateway(first, "tok") as (a, _):
        assert (await a.get("/v1/agents", headers=bearer(OPERATOR))).status_code == 200
    # The same token again (a restart that kept the profile): still valid.
    async with inproc.gateway(first, "tok") as (a, _):
        assert (await a.get("/v1/agents", headers=bearer(OPERATOR))).status_code == 200
    second = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR + "-2")
    async with inproc.gateway(second, "tok") as (a, _):
        assert (await a.get("/v1/agents", headers=bearer(OPERATOR + "-2"))).status_code == 200
        r = await a.get("/v1/agents", headers=bearer(OPERATOR))
        assert r.status_code == 401 and "revoked" in r.text
        listed = (await a.get("/v1/tokens", headers=bearer(OPERATOR + "-2"))).json()["tokens"]
        assert sorted(t["status"] for t in listed) == ["active", "revoked"]


async def test_proxy_auth_tokens_are_listed_revoked_and_expire(
        nats_url: str, redis_url: str, tmp_path: Any) -> None:
    cfg = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR, token_cache_ttl=0.2)
    async with inproc.gateway(cfg, "tok") as (a, gw):
        made = await make(a, proxy_auth=True, name="web")
        short = await make(a, proxy_auth=True, expires_in=5.0)
        key, secret = made["token_id"], made["token_secret"]
        assert await gw.tokens.proxy_auth(key, secret) == "default"
        assert await gw.tokens.proxy_auth(short["token_id"], short["token_secret"]) == "default"
        listed = (await a.get("/v1/tokens", headers=bearer(OPERATOR))).json()["tokens"]
        [row] = [t for t in listed if t["token_id"] == key]
        assert row["kind"] == "proxy_auth" and row["scope"] == "" and row["name"] == "web"
        assert secret not in str(listed)
        # A proxy-auth token never works as an API token.
        assert (await a.get("/v1/apps", headers=bearer(secret))).status_code == 401
        r = await a.delete(f"/v1/tokens/{key}", headers=bearer(OPERATOR))
        assert r.status_code == 200, r.text
        assert await gw.tokens.proxy_auth(key, secret) is None
        await asyncio.sleep(max(0.0, short["expires_at"] - time.time()) + 0.3)
        assert await gw.tokens.proxy_auth(short["token_id"], short["token_secret"]) is None


async def test_an_unknown_token_is_not_remembered_as_unknown(
        nats_url: str, redis_url: str, tmp_path: Any, js: Any) -> None:
    """A token refused once (not stored yet, or misread right after a nats-server restart)
    works at the next request once it is stored, even with a long cache lifetime."""
    from burst_gateway.auth import TokenStore

    cfg = inproc.settings(nats_url, redis_url, str(tmp_path), OPERATOR, token_cache_ttl=60.0)
    async with inproc.gateway(cfg, "tok") as (c, _):
        token = "bst_stored-after-its-first-refusal"
        r = await c.get("/v1/apps", headers=bearer(token))
        assert r.status_code == 401, r.text
        store = TokenStore(await js.key_value(names.KV_TOKENS), cache_ttl=0.0)
        await store.create("default", scope="admin", name="late", token=token)
        r = await c.get("/v1/apps", headers=bearer(token))
        assert r.status_code == 200, r.text
