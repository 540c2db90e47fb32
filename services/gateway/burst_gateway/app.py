"""The gateway's FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from burst_core import names
from burst_gateway import (
    api_agents,
    api_apps,
    api_billing,
    api_blobs,
    api_budgets,
    api_calls,
    api_clients,
    api_cluster,
    api_containers,
    api_logs,
    api_maps,
    api_objects,
    api_schedules,
    api_secrets,
    api_tokens,
    api_volumes,
    api_webhooks,
    dashboard,
    errors,
    metrics,
    scopes,
    validate,
)
from burst_gateway.fastcalls import FastCalls
from burst_gateway.settings import GatewaySettings
from burst_gateway.state import Gateway
from burst_gateway.unavailable import NatsGuard


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = Gateway(settings)
        await gw.start()
        app.state.gw = gw
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="Burst",
        version="0.1.0",
        description=(
            "Self-hosted serverless compute for Python: deploy apps, call functions.\n\n"
            "Errors are `{\"error\": {\"type\": ..., \"message\": ...}}`. App and "
            f"function names: {names.IDENT_RULE}. JSON has no NaN or infinities: in "
            "results they are the strings \"NaN\", \"Infinity\" and \"-Infinity\"."),
        lifespan=lifespan,
        # Every route's token scope is declared in scopes.py (one line per route).
        dependencies=[Depends(scopes.enforce), Depends(validate.path_names)],
    )
    errors.install(app, settings.unavailable_retry_after)
    # Routes: each router's module declares them; the scope each one needs is a line of
    # scopes.ROUTES (a route missing there answers operators only, and a test names it).
    app.include_router(api_cluster.router)
    app.include_router(api_tokens.router)
    app.include_router(api_apps.router)
    app.include_router(api_clients.router)
    app.include_router(api_calls.router)
    app.include_router(api_billing.router)
    app.include_router(api_agents.router)
    app.include_router(api_objects.router)
    app.include_router(api_volumes.router)
    app.include_router(api_blobs.router)
    app.include_router(api_maps.router)
    app.include_router(api_budgets.router)
    app.include_router(api_schedules.router)
    app.include_router(api_webhooks.router)
    app.include_router(api_secrets.router)
    app.include_router(api_logs.router)
    app.include_router(api_containers.router)
    app.include_router(metrics.router)
    # The dashboard (HTML; its session cookie, not a bearer token: public to scopes.py).
    app.include_router(dashboard.router)
    return app


def asgi_app(settings: GatewaySettings) -> NatsGuard:
    """What the gateway serves: 503 while NATS is out of reach; else the SDK's call
    request on the fast path, in front of FastAPI's own middleware (error handling,
    telemetry, body limit), and everything else through :func:`create_app`'s
    application."""
    app = create_app(settings)
    return NatsGuard(app, FastCalls(app), settings.unavailable_retry_after)
