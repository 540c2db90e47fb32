"""The gateway's secrets on a real NATS: agents get a placed container's values over core
NATS (sealed to their one-use key), nobody else does; webhook signing secrets sealed the
old way are sealed again under their own derived key when the gateway starts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from burst.wire import FunctionSpec, Resources, SecretSpec
from burst_agent.secrets import SecretsUnavailable, fetch_env
from burst_core import bus, names, sealing
from burst_core.schemas import (
    AgentRecord,
    Allocation,
    Placement,
    SecretsFetch,
    WebhookEndpoint,
    WebhookEndpointDecoder,
    encode,
)
from burst_core.secrets import reply_keypair
from burst_gateway.state import Gateway
from tests import gateway_inprocess as inproc

pytestmark = pytest.mark.integration

TOKEN = "bst_secrets-integration-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VALUE = "integration-value-5b1f0e"


@pytest.fixture
async def gateway(nats_url: str, redis_url: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    config = inproc.settings(nats_url, redis_url, str(tmp_path / "home"), TOKEN)
    async with inproc.gateway(config, "sec", headers=AUTH) as (c, gw):
        yield c, gw


def placement(container_id: str, secrets: list[SecretSpec], fn: str = "f") -> Placement:
    return Placement(container_id=container_id, agent_id="agent-1", workspace="default",
                     app="sec", deployment_id="d1", bundle_hash="0" * 64,
                     function=FunctionSpec(name=fn, module="m", qualname=fn, secrets=secrets),
                     resources=Resources(), placed_at=time.time())


async def place(gw: Gateway, container_id: str, fn_key: str) -> None:
    kv = await gw.js.key_value(names.KV_AGENTS)
    rec = AgentRecord(agent_id="agent-1", cpu=4, memory_mb=4096, allocations={
        container_id: Allocation(fn_key=fn_key, resources=Resources())})
    await kv.put("agent-1", encode(rec))


async def test_only_a_placed_container_gets_values(
        gateway: tuple[httpx.AsyncClient, Gateway]) -> None:
    c, gw = gateway
    r = await c.post("/v1/secrets", json={"name": "creds", "values": {"TOKEN": VALUE,
                                                                       "MODE": "stored"}})
    assert r.status_code == 201 and VALUE not in r.text, r.text
    sealed_code = SecretSpec(values={"MODE": "code"})
    await gw.secrets.prepare("default", [FunctionSpec(name="f", module="m", qualname="f",  # type: ignore[union-attr]
                                                      secrets=[sealed_code])])
    assert sealed_code.values == {} and sealed_code.sealed.startswith("envelope:v1:")
    specs = [SecretSpec(name="creds"), sealed_code]
    await place(gw, "ct-1", "default.sec.f")

    env = await fetch_env(gw.nc, "agent-1", placement("ct-1", specs), timeout=10)
    assert env == {"TOKEN": VALUE, "MODE": "code"}  # the later secret's MODE wins

    # What travels on NATS is sealed to the asking agent's key.
    _, pub = reply_keypair()
    req = SecretsFetch(container_id="ct-1", agent_id="agent-1", workspace="default",
                       app="sec", function="f", secrets=specs, reply_key=pub)
    raw = await gw.nc.request(names.SUBJECT_SECRETS_FETCH, encode(req), timeout=10)
    assert VALUE.encode() not in raw.data and b"code" not in raw.data

    with pytest.raises(SecretsUnavailable, match="container ct-2 is not placed on agent"):
        await fetch_env(gw.nc, "agent-1", placement("ct-2", specs), timeout=10)
    with pytest.raises(SecretsUnavailable, match="not placed on agent agent-1 for "
                                                 "default.sec.g"):
        await fetch_env(gw.nc, "agent-1", placement("ct-1", specs, fn="g"), timeout=10)
    await place(gw, "ct-3", "default.sec.f")
    with pytest.raises(SecretsUnavailable, match="secret 'gone' not found in workspace"):
        await fetch_env(gw.nc, "agent-1", placement("ct-3", [SecretSpec(name="gone")]),
                        timeout=10)


async def test_api_never_answers_values(gateway: tuple[httpx.AsyncClient, Gateway]) -> None:
    c, _ = gateway
    r = await c.post("/v1/secrets", json={"name": "api", "values": {"K": VALUE}})
    assert r.status_code == 201
    r2 = await c.post("/v1/secrets", json={"name": "api", "values": {"K": VALUE}})
    assert r2.status_code == 409 and "already exists" in r2.text
    r3 = await c.post("/v1/secrets", json={"name": "api", "values": {"K": VALUE + "2"},
                                           "force": True})
    assert r3.status_code == 201 and r3.json()["version"] == 2
    bad = await c.post("/v1/secrets", json={"name": "api", "values": {"NOT-A-NAME": VALUE}})
    assert bad.status_code == 400 and "key 'NOT-A-NAME' is not an environment" in bad.text
    for resp in (r, r2, r3, bad, await c.get("/v1/secrets"), await c.get("/v1/secrets/api")):
        assert VALUE not in resp.text, resp.text
    assert (await c.get("/v1/secrets/nope")).status_code == 404
    bad_name = await c.delete("/v1/secrets/bad.name")
    assert bad_name.status_code == 400 and "invalid secret name 'bad.name'" in bad_name.text


async def test_webhook_secret_sealed_with_the_master_key_is_resealed_on_start(
        nats_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    home = tmp_path / "home"
    master = sealing.load_or_create_key(home)
    legacy = sealing.PREFIX_V1 + Fernet(master).encrypt(b"whsec_legacy").decode()
    nc = await bus.connect(nats_url, "seed")
    js = nc.jetstream()
    await bus.ensure_topology(js)
    kv = await bus.ensure_kv(js, names.KV_WEBHOOKS)
    ep = WebhookEndpoint(endpoint_id="ep_1", workspace="default", url="http://x/",
                         events=["budget.exceeded"], secret=legacy)
    await kv.put(names.webhook_key("default", "ep_1"), encode(ep))
    await nc.close()
    config = inproc.settings(nats_url, redis_url, str(home), TOKEN)
    async with inproc.gateway(config, "sec", headers=AUTH) as (_, gw):
        raw, _ = await bus.kv_get(await gw.js.key_value(names.KV_WEBHOOKS),
                                  names.webhook_key("default", "ep_1"))
    assert raw is not None
    stored: Any = WebhookEndpointDecoder.decode(raw).secret
    assert stored.startswith(sealing.PREFIX_V2)
    assert sealing.Sealer.from_home(home).open(stored) == "whsec_legacy"


async def test_gateway_for_other_machines_refuses_to_start_without_a_key(
        nats_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from burst_core.secrets import KeyRingError

    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    config = inproc.settings(nats_url, redis_url, str(tmp_path / "empty-home"), TOKEN,
                             host="0.0.0.0")
    with pytest.raises(KeyRingError, match="no master key: set BURST_MASTER_KEYS"):
        async with inproc.gateway(config, "sec", headers=AUTH):
            pass
    assert not sealing.key_path(tmp_path / "empty-home").exists()


async def test_no_gateway_is_a_start_to_try_again(nats_url: str) -> None:
    from burst_agent.secrets import SecretsNotAnswered

    nc = await bus.connect(nats_url, "agent-without-gateway")
    try:
        with pytest.raises(SecretsNotAnswered, match="no gateway"):
            await fetch_env(nc, "agent-1", placement("ct-1", [SecretSpec(name="x")]),
                            timeout=2)
    finally:
        await nc.close()
