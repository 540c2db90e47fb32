"""Schemathesis over the gateway's own OpenAPI document finds no 5xx (issue 12).

A real gateway (``python -m burst_gateway``: uvicorn with the gateway's HTTP protocol) on
a real NATS and Redis, with a valid token, one deployed app, a call and a map. Every
operation of the document gets requests generated from its schema (valid and invalid
ones, each also with the names and ids that exist), derandomised and a bounded number per
operation, so the test is the same on every run and takes well under two minutes on a
loaded machine.

Left out: adding a webhook endpoint and sending it a test event, so that no generated
request can make anything send traffic off the machine (no billing runs here to deliver
either; listing and removing endpoints stay in); and opening a `burst shell`, which waits for
a container of the function to start.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from burst.wire import MSGPACK, FunctionSpec
from burst_core import bus, names
from burst_core.schemas import DeploymentRecord, encode
from tests.servers import Server, free_port

pytestmark = pytest.mark.integration

TOKEN = "bst_fuzz-test-token"
#: Requests generated per operation and mode at most (about 40 operations, 2 to 4 modes
#: each: about 1,100 requests, 10 s on an idle machine).
EXAMPLES = 25
LEFT_OUT = {("POST", "/v1/webhooks"), ("POST", "/v1/webhooks/{endpoint_id}/test"),
            # `burst shell`: starts a container of the function and holds the request until
            # it runs (no agent here: until the start timeout), which is not a 5xx.
            ("POST", "/v1/apps/{app}/functions/{fn}/shell")}
DEPLOYED = {"app": "fuzz", "fn": "f"}


@schemathesis.serializer(MSGPACK)
def _msgpack(ctx: Any, value: Any) -> bytes:
    """The SDK's encoding, for the routes that take it: whatever was generated, as msgpack
    (mostly the wrong shape, which the gateway must refuse with a 400)."""
    try:
        return msgspec.msgpack.encode(value)
    except (OverflowError, TypeError):  # an integer msgpack has no room for: any bytes
        return repr(value).encode()


async def _deploy(nats_url: str) -> None:
    nc = await bus.connect(nats_url, "fuzz-test")
    kv = await nc.jetstream().key_value(names.KV_DEPLOYMENTS)
    dep = DeploymentRecord(workspace="default", app=DEPLOYED["app"], deployment_id="d1",
                           bundle_hash="0" * 64, created_at=time.time(),
                           functions=[FunctionSpec(name=DEPLOYED["fn"], module="m",
                                                   qualname="f")])
    await kv.put(names.deployment_key("default", DEPLOYED["app"]), encode(dep))
    await nc.close()


@pytest.fixture
def gateway(nats_url: str, redis_server: Server, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, BURST_NATS_URL=nats_url, BURST_REDIS_URL=redis_server.url,
               BURST_HOME=str(tmp_path), BURST_PORT=str(port), BURST_LOG_LEVEL="warning",
               BURST_WEB_PORT="0",  # (no web port: the default one may be taken)
               BURST_BOOTSTRAP_TOKEN_HASH=hashlib.sha256(TOKEN.encode()).hexdigest(),
               # Generated ?wait= values are held this long at most, not a minute.
               BURST_MAX_SYNC_WAIT="0.2")
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "burst_gateway"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "gateway.log").read_text()[-3000:]
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _five_hundreds(strategy: Any, session: requests.Session, gateway: str,
                   auth: dict[str, str]) -> list[str]:
    """Up to three of the strategy's requests that got a 5xx, described."""
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        what = (f"{case.method} {case.formatted_path} query={case.query} "
                f"headers={case.headers} body={str(case.body)[:200]!r}")
        try:
            # Streamed, and closed once the status is in: a log follow never ends by itself.
            with session.request(**case.as_transport_kwargs(base_url=gateway, headers=auth),
                                 stream=True, timeout=30) as r:
                if r.status_code >= 500 and len(seen) < 3:
                    seen.append(f"{what} -> {r.status_code} {r.text[:300]}")
        except requests.ConnectionError as e:  # (uvicorn drops a connection after a 500)
            if len(seen) < 3:
                seen.append(f"{what} -> connection dropped: {e}")

    try:
        check()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
        pass
    return seen


def test_no_generated_request_gets_a_5xx(gateway: str, nats_url: str) -> None:
    schema = schemathesis.openapi.from_url(gateway + "/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    operations = 0
    session = requests.Session()
    asyncio.run(_deploy(nats_url))
    # A call and a map that exist (nothing runs them), for the routes that name one.
    known = dict(DEPLOYED)
    r = session.post(f"{gateway}/v1/apps/fuzz/functions/f/calls", json={"args": [1]},
                     headers=auth)
    known["call_id"] = r.json()["call_id"]
    r = session.post(f"{gateway}/v1/apps/fuzz/functions/f/maps",
                     json={"inputs": [{"args": [1]}]}, headers=auth)
    known["map_id"] = r.json()["map_id"]
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in LEFT_OUT:
            continue
        operations += 1
        path_names = {k: v for k, v in known.items() if "{" + k + "}" in op.path}
        strategies = [op.as_strategy(GenerationMode.POSITIVE),
                      op.as_strategy(GenerationMode.NEGATIVE)]
        if path_names:  # names and ids that exist, to reach past the checks of them
            strategies += [op.as_strategy(mode, path_parameters=path_names)
                           for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        for strategy in strategies:
            asyncio.run(_deploy(nats_url))  # again: a generated DELETE may have removed it
            failures += _five_hundreds(strategy, session, gateway, auth)
    assert operations >= 30, f"only {operations} operations in the document"
    assert not failures, "\n".join(failures)
