"""Which token scope each route of the API needs: one table, checked for every request.

A new route gets one line in ``ROUTES`` ("METHOD /path as declared": scope). A route
missing from it answers only operator tokens (and tests/unit/test_gateway_scopes.py
fails, naming it). Scopes, weakest first, are ``auth.SCOPES``: read < invoke < deploy <
admin < operator; ``PUBLIC`` routes need no token at all.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute

from burst.exception import PermissionDeniedError
from burst_core import logs
from burst_gateway import auth, dashboard

log = logs.get("burst.gateway.scopes")

PUBLIC = "public"

ROUTES: dict[str, str] = {
    "GET /healthz": PUBLIC,
    # cluster
    "GET /v1/status": "operator",
    "GET /v1/agents": "operator",
    "POST /v1/agents/{agent_id}/preempt": "operator",
    "POST /v1/agents/{agent_id}/drain": "operator",
    "POST /v1/agents/{agent_id}/revoke": "operator",
    "POST /v1/secrets/rotate-key": "operator",
    # tokens and workspaces (an admin: its own workspace's tokens; see api_tokens.py)
    "POST /v1/tokens": "admin",
    "GET /v1/tokens": "admin",
    "DELETE /v1/tokens/{token_id}": "admin",
    "GET /v1/workspaces": "read",
    "POST /v1/workspaces": "operator",
    # apps
    "HEAD /v1/bundles/{bundle_hash}": "read",
    "PUT /v1/bundles/{bundle_hash}": "deploy",
    "GET /v1/apps": "read",
    "POST /v1/apps": "deploy",
    "GET /v1/apps/{app}/status": "read",
    "DELETE /v1/apps/{app}": "deploy",
    "GET /v1/apps/{app}/logs": "read",
    "GET /v1/apps/{app}/history": "read",
    "POST /v1/apps/{app}/rollback": "deploy",
    "PUT /v1/clients/{client_id}/heartbeat": "deploy",
    "DELETE /v1/clients/{client_id}": "deploy",
    # calls (fastcalls.py checks the SDK's call request against the same line)
    "POST /v1/apps/{app}/functions/{fn}/calls": "invoke",
    "POST /v1/apps/{app}/functions/{fn}/calls/batch": "invoke",
    "POST /v1/apps/{app}/functions/{fn}/maps": "invoke",
    "POST /v1/calls/wait": "read",
    "GET /v1/calls/{call_id}": "read",
    "DELETE /v1/calls/{call_id}": "invoke",
    "GET /v1/calls/{call_id}/items": "read",
    "GET /v1/calls/{call_id}/graph": "read",
    "GET /v1/calls/{call_id}/trace": "read",
    "POST /v1/traces": "invoke",
    "GET /v1/maps/{map_id}/results": "read",
    "PUT /v1/blobs/{ref}": "invoke",
    "GET /v1/blobs/{ref}": "read",
    "HEAD /v1/blobs/{ref}": "read",
    "POST /v1/dicts": "invoke",
    "POST /v1/queues": "invoke",
    # one operation on a volume, reads and writes alike (burst.wire.VolumeRequest)
    "POST /v1/volumes": "invoke",
    # billing
    "GET /v1/billing/report": "read",
    "GET /v1/budgets": "read",
    "PUT /v1/budgets/{scope}": "admin",
    "DELETE /v1/budgets/{scope}": "admin",
    "GET /v1/webhooks": "read",
    "POST /v1/webhooks": "admin",
    "DELETE /v1/webhooks/{endpoint_id}": "admin",
    "POST /v1/webhooks/{endpoint_id}/test": "admin",
    "GET /v1/webhooks/deliveries": "read",
    # schedules
    "GET /v1/schedules": "read",
    "POST /v1/apps/{app}/functions/{fn}/schedule/pause": "deploy",
    "POST /v1/apps/{app}/functions/{fn}/schedule/resume": "deploy",
    # secrets (names and keys only; values never leave the gateway)
    "GET /v1/secrets": "read",
    "POST /v1/secrets": "admin",
    "GET /v1/secrets/{name}": "read",
    "DELETE /v1/secrets/{name}": "admin",
    # logs, containers, metrics (cluster-wide parts for operators: see their modules)
    "GET /v1/logs": "read",
    "GET /v1/containers": "read",
    "GET /v1/containers/{container_id}/logs": "read",
    "POST /v1/containers/{container_id}/stop": "deploy",
    "POST /v1/containers/{container_id}/exec": "deploy",
    "POST /v1/execs/{exec_id}/stdin": "deploy",
    "POST /v1/apps/{app}/functions/{fn}/shell": "deploy",
    "GET /metrics": "read",
    # the dashboard: signed in by its session cookie (dashboard.py checks the token's
    # scope behind it, page by page)
    **{route: PUBLIC for route in dashboard.ROUTES},
}


def needed(method: str, path: str) -> str | None:
    """The scope the route ``METHOD path`` (path as declared) needs; None: undeclared."""
    return ROUTES.get(f"{method} {path}")


async def enforce(request: Request) -> None:
    """FastAPI dependency of the whole API: the caller's token must cover the matched
    route's scope (401 without a working token, 403 naming the scope it needs). An
    undeclared route is for operators only."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    methods = route.methods or {request.method}
    method = request.method if request.method in methods else next(iter(methods))
    need = needed(method, route.path)
    if need == PUBLIC:
        return
    if need is None:
        log.warning("route_without_scope", method=method, path=route.path)
        need = auth.OPERATOR
    p = await auth.principal_of(request.app.state.gw.tokens,
                                request.headers.get("authorization", ""))
    request.state.principal = p
    if not auth.covers(p.scope, need):
        raise PermissionDeniedError(auth.denied(request.method, request.url.path, need, p))
