"""The gateway's connections and caches, shared by its routes (``app.state.gw``;
routes take it as a parameter ``gw: GatewayDep``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from burst.exception import InvalidError
from burst_core import bus, logs, names
from burst_core.calls.caller import Caller
from burst_core.objects import Objects
from burst_core.schemas import DeploymentRecord, DeploymentRecordDecoder
from burst_core.secrets import KeyRing, webhook_keys_path, write_webhook_keys
from burst_core.service import cancel_and_wait, heartbeat_loop
from burst_core.tracing import Tracing
from burst_core.volumes import Volumes
from burst_gateway.agent_figures import AgentFigures
from burst_gateway.auth import TokenStore, Workspaces
from burst_gateway.secret_store import SecretStore
from burst_gateway.settings import GatewaySettings

log = logs.get("burst.gateway")
#: Hosts that only this machine reaches.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Gateway:
    nc: NATS
    js: JetStreamContext
    deployments_kv: KeyValue
    bundles: ObjectStore
    tokens: TokenStore
    workspaces: Workspaces
    app_versions: KeyValue
    caller: Caller
    tracing: Tracing

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._deployments: dict[str, DeploymentRecord] = {}  # kept current by the mirror
        self._deployments_mirror: bus.KVMirror[DeploymentRecord] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()
        # Opened on first use by the routes that need them.
        self.maps_kv: KeyValue | None = None
        self.schedules_kv: KeyValue | None = None
        self.clients_kv: KeyValue | None = None
        self.objects: Objects | None = None
        self.secrets: SecretStore | None = None
        #: Signs the dashboard's session cookies (derived from the master key in start(),
        #: so that every gateway of the cluster accepts the same sessions).
        self.dashboard_key = b""
        self.volumes: Volumes | None = None
        #: Every agent's latest figures, for /metrics.
        self.agent_figures = AgentFigures(settings.metrics_stale)
        #: Interactive execs streaming through this gateway: exec id -> (agent id,
        #: workspace), where their stdin goes (``POST /v1/execs/{id}/stdin``).
        self.execs: dict[str, tuple[str, str]] = {}

    async def start(self) -> None:
        s = self.settings
        # Listening for other machines, it never makes a key of its own: one made here
        # would not open what the cluster's other gateways sealed.
        ring = KeyRing.load(s.home, create=s.host in LOOPBACK)
        # Billing opens webhook signing secrets with these derived keys alone.
        keys_file = webhook_keys_path(s.home, s.webhook_keys_file)
        write_webhook_keys(ring, keys_file)
        self.dashboard_key = hmac.new(ring.newest.secrets_key, b"burst-dashboard-session",
                                      hashlib.sha256).digest()
        self.nc = await bus.connect(s.nats_url, f"gateway-{s.instance}", ca=s.nats_ca)
        self.js = self.nc.jetstream()
        await bus.ensure_topology(self.js, s.topology())
        await self.agent_figures.start(self.nc)
        self.deployments_kv = await self.js.key_value(names.KV_DEPLOYMENTS)
        self.bundles = await self.js.object_store(names.OBJ_BUNDLES)
        self.tokens = TokenStore(await self.js.key_value(names.KV_TOKENS), s.token_cache_ttl,
                                 s.token_use_interval)
        self.workspaces = Workspaces(await self.js.key_value(names.KV_WORKSPACES))
        self.app_versions = await self.js.key_value(names.KV_APP_VERSIONS)
        await self.workspaces.create(s.bootstrap_workspace, exist_ok=True)
        if s.bootstrap_token_hash:
            revoked = await self.tokens.ensure_bootstrap(s.bootstrap_token_hash,
                                                         s.bootstrap_workspace)
            if revoked:
                log.info("bootstrap_tokens_revoked", count=revoked)
        # Workspaces from before they were recorded: those their tokens name.
        for ws in {rec.workspace for rec in (await self.tokens.records()).values()}:
            with contextlib.suppress(InvalidError):  # (a name no rule allows: left alone)
                await self.workspaces.create(ws, exist_ok=True)
        self.tracing = Tracing("gateway", self.nc, s.trace_sample, s.trace_otlp_endpoint,
                               enabled=s.tracing)
        self.caller = Caller(self.nc, self.js, self.deployment,
                             max_sync_wait=s.max_sync_wait, signal_interval=s.signal_interval,
                             recent_outputs=s.recent_outputs,
                             recent_outputs_age=s.recent_outputs_age)
        await self.caller.start()
        self._deployments_mirror = bus.KVMirror(
            self.js, names.KV_DEPLOYMENTS, DeploymentRecordDecoder, what="deployment",
            items=self._deployments)
        await self._deployments_mirror.start()
        # The gateway alone holds the master keys: it seals and opens user secrets, and
        # answers the agents' requests for a placed container's values.
        self.secrets = SecretStore(self.nc, self.js, await self.js.key_value(names.KV_SECRETS),
                                   ring, webhook_keys_file=keys_file)
        resealed = await self.secrets.reseal_webhook_secrets()
        if resealed:
            log.info("webhook_secrets_resealed", count=resealed)
        await self.secrets.serve()
        self._tasks.append(asyncio.create_task(
            heartbeat_loop(self.js, "gateway", s.instance, s.service_heartbeat_interval,
                           health_file=s.health_file)
        ))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.agent_figures.stop()
        if self.secrets is not None:
            await self.secrets.stop()
        if self._deployments_mirror is not None:
            await self._deployments_mirror.stop()
        await self.caller.stop()
        with contextlib.suppress(Exception):
            await self.nc.drain()

    async def deployment(self, workspace: str, app: str) -> DeploymentRecord | None:
        key = names.deployment_key(workspace, app)
        dep = self._deployments.get(key)
        if dep is not None:
            return dep
        # Not in the cache yet (deployed a moment ago through another replica): ask KV.
        raw, _ = await bus.kv_get(self.deployments_kv, key)
        if raw is None:
            return None
        dep = DeploymentRecordDecoder.decode(raw)
        self._deployments[key] = dep
        return dep

    def remember(self, dep: DeploymentRecord) -> None:
        self._deployments[names.deployment_key(dep.workspace, dep.app)] = dep

    def forget(self, workspace: str, app: str) -> None:
        self._deployments.pop(names.deployment_key(workspace, app), None)

    def deployments_of(self, workspace: str) -> list[DeploymentRecord]:
        return sorted((d for d in self._deployments.values() if d.workspace == workspace),
                      key=lambda d: d.app)


async def gateway(request: Request) -> Gateway:
    """FastAPI dependency: the application's :class:`Gateway` (the lifespan of
    :func:`burst_gateway.app.create_app` sets ``app.state.gw``). ``async`` so that FastAPI
    calls it in the event loop, not in its thread pool."""
    gw: Gateway = request.app.state.gw
    return gw


#: A route's parameter ``gw: GatewayDep`` is the gateway.
GatewayDep = Annotated[Gateway, Depends(gateway)]
