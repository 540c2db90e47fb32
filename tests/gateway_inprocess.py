"""A gateway running in the test's process (as uvicorn serves it, the SDK's fast path in
front) on a real NATS and Redis, with one deployed app of one function ``f``."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from burst.wire import FunctionSpec
from burst_core import names
from burst_core.schemas import DeploymentRecord, encode
from burst_gateway.app import asgi_app
from burst_gateway.settings import GatewaySettings
from burst_gateway.state import Gateway


def settings(nats_url: str, redis_url: str, home: str, token: str,
             **extra: Any) -> GatewaySettings:
    """Settings whose bootstrap (admin) token is ``token``."""
    return GatewaySettings(nats_url=nats_url, redis_url=redis_url, home=home,
                           bootstrap_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                           **extra)


@contextlib.asynccontextmanager
async def gateway(config: GatewaySettings, app: str, **client: Any
                  ) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The gateway started (lifespan), ``app`` deployed in workspace ``default`` with one
    function ``f``, and an HTTP client to it (``client``: httpx options)."""
    asgi = asgi_app(config)
    async with asgi.app.router.lifespan_context(asgi.app):
        gw = asgi.state.gw
        dep = DeploymentRecord(workspace="default", app=app, deployment_id="d1",
                               bundle_hash="0" * 64, created_at=time.time(),
                               functions=[FunctionSpec(name="f", module="m", qualname="f")])
        await gw.deployments_kv.put(names.deployment_key("default", app), encode(dep))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                     base_url="http://gw", **client) as c:
            yield c, gw
