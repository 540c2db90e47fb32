"""Every route of the gateway declares the token scope it needs (scopes.ROUTES)."""

from __future__ import annotations

from burst_gateway import auth, dashboard, scopes
from burst_gateway.app import create_app
from burst_gateway.settings import GatewaySettings


def _operations() -> list[str]:
    doc = create_app(GatewaySettings()).openapi()
    # The dashboard's pages are left out of the OpenAPI document: its router names them.
    return [f"{method.upper()} {path}" for path, ops in doc["paths"].items()
            for method in ops] + dashboard.ROUTES


def test_the_dashboard_pages_are_public_to_the_token_check() -> None:
    # (Their session cookie decides, in dashboard.py; e2e/test_dashboard.py signs in.)
    assert "GET /dashboard/calls/{call_id}" in dashboard.ROUTES
    assert all(scopes.needed(*r.split(" ", 1)) == scopes.PUBLIC for r in dashboard.ROUTES)


def test_every_route_declares_its_scope() -> None:
    ops = _operations()
    assert len(ops) > 40
    missing = [op for op in ops if op not in scopes.ROUTES]
    assert not missing, ("routes with no scope in burst_gateway/scopes.py ROUTES (add a "
                         f"line for each): {missing}")


def test_the_table_names_only_real_routes_and_known_scopes() -> None:
    ops = set(_operations())
    assert sorted(set(scopes.ROUTES) - ops) == []
    assert {s for s in scopes.ROUTES.values()} <= {*auth.SCOPES, scopes.PUBLIC}


def test_scopes_are_ordered() -> None:
    assert auth.covers("operator", "read") and auth.covers("invoke", "read")
    assert auth.covers("deploy", "invoke") and not auth.covers("invoke", "deploy")
    assert not auth.covers("read", "invoke") and not auth.covers("admin", "operator")
