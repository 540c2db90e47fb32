"""The web dashboard at ``/dashboard`` (on the API's port, never the web endpoints').

Sign-in takes an API token once; the session is a cookie (``HttpOnly``,
``SameSite=Strict``, ``Secure`` over HTTPS) holding the token's hash, an expiry and an
HMAC made with a key derived from the cluster's master key, so that every gateway of the
cluster accepts it and a forged or altered one is refused. The token's record is read on
every page: a revoked or expired token ends its sessions. Every form that changes
something carries a CSRF token bound to the session. Pages are rendered here (Jinja2) with
their charts as inline SVG: no script, no external asset.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from burst.exception import AuthError
from burst_core import bus
from burst_core.schemas import TokenRecordDecoder
from burst_gateway import auth, dashboard_charts, dashboard_data
from burst_gateway.api_calls import not_found
from burst_gateway.auth import Principal
from burst_gateway.state import Gateway

router = APIRouter(include_in_schema=False)
COOKIE = "burst_session"
#: The longest sign-in form body read.
_MAX_FORM = 8 << 10
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "dashboard_templates"),
    autoescape=True, undefined=jinja2.StrictUndefined)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    d = max(0.0, time.time() - t)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.1f}h ago"
    return f"{d / 86400:.1f}d ago"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 0.001:
        return f"{v * 1000:.2f} ms"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_env.filters.update(ago=_ago, secs=_secs, when=_when)
_env.globals.update(sparkline=dashboard_charts.sparkline, meter=dashboard_charts.meter,
                    spend_chart=dashboard_charts.spend_chart)


# ---- sessions ----------------------------------------------------------------------
def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def make_session(key: bytes, token_hash: str, ttl: float, now: float | None = None) -> str:
    body = f"{int((now or time.time()) + ttl)}.{token_hash}"
    return f"{body}.{_sign(key, body)}"


def session_hash(key: bytes, value: str, now: float | None = None) -> str | None:
    """The token hash of a well-signed, unexpired session cookie, else None."""
    body, _, sig = value.rpartition(".")
    exp, _, token_hash = body.partition(".")
    if not sig or not hmac.compare_digest(sig, _sign(key, body)):
        return None
    try:
        if int(exp) <= (now or time.time()):
            return None
    except ValueError:
        return None
    return token_hash


def csrf_token(key: bytes, session: str) -> str:
    return _sign(key, "csrf." + session)[:32]


async def _principal_of_hash(gw: Gateway, token_hash: str) -> Principal | None:
    raw, _ = await bus.kv_get(gw.tokens.kv, token_hash)  # type: ignore[arg-type]
    if raw is None:
        return None
    rec = TokenRecordDecoder.decode(raw)
    if rec.kind or auth.status_of(rec, time.time()) != "active":
        return None
    return Principal(workspace=rec.workspace, scope=auth.scope_of(rec),
                     token_id=auth.token_id_of(token_hash, rec), token_name=rec.name)


async def _session(request: Request) -> tuple[Principal, str] | None:
    gw: Gateway = request.app.state.gw
    value = request.cookies.get(COOKIE, "")
    token_hash = session_hash(gw.dashboard_key, value) if value else None
    if token_hash is None:
        return None
    p = await _principal_of_hash(gw, token_hash)
    return (p, value) if p is not None else None


def _page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    html = _env.get_template(template).render(request=request, **ctx)
    resp = HTMLResponse(html, status_code=status)
    resp.headers["content-security-policy"] = CSP
    resp.headers["x-frame-options"] = "DENY"
    resp.headers["cache-control"] = "no-store"
    resp.headers["referrer-policy"] = "same-origin"
    return resp


def _to_login(request: Request) -> Response:
    nxt = urllib.parse.quote(request.url.path, safe="/")
    return RedirectResponse(f"/dashboard/login?next={nxt}", status_code=303)


def _render(request: Request, s: tuple[Principal, str], template: str, section: str,
            status: int = 200, **ctx: Any) -> Response:
    """A page for the signed-in session ``s`` (its principal and cookie)."""
    p, value = s
    gw: Gateway = request.app.state.gw
    return _page(request, template, status=status, p=p, section=section,
                 csrf=csrf_token(gw.dashboard_key, value), **ctx)


def _safe_next(nxt: str) -> str:
    """Only a dashboard path of this site (never another origin) is followed."""
    if nxt.startswith("/dashboard") and "//" not in nxt and "\\" not in nxt:
        return nxt
    return "/dashboard"


# ---- sign-in -------------------------------------------------------------------------
@router.get("/dashboard/login")
async def login_form(request: Request, next: str = "/dashboard") -> Response:
    return _page(request, "login.html", p=None, section="login", error="",
                 next=_safe_next(next))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        return {}
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    form = await _form(request)
    nxt = _safe_next(form.get("next", "/dashboard"))
    token = form.get("token", "").strip()
    try:
        if not token:
            raise AuthError("no token given: paste an API token (bst_...)")
        await auth.principal_of(gw.tokens, f"Bearer {token}")
    except AuthError as e:
        return _page(request, "login.html", status=401, p=None, section="login",
                     error=str(e), next=nxt)
    value = make_session(gw.dashboard_key, auth.hash_token(token),
                         gw.settings.dashboard_session_ttl)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, value, max_age=int(gw.settings.dashboard_session_ttl),
                    path="/dashboard", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


async def _check_csrf(request: Request) -> tuple[Principal, str] | None:
    s = await _session(request)
    if s is None:
        return None
    gw: Gateway = request.app.state.gw
    sent = (await _form(request)).get("csrf", "")
    if not hmac.compare_digest(sent, csrf_token(gw.dashboard_key, s[1])):
        return None
    return s


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    if await _check_csrf(request) is None:
        return _page(request, "error.html", status=403, p=None, section="",
                     message="sign-out refused: the form's CSRF token does not match "
                             "this session (reload the page and try again)")
    resp = RedirectResponse("/dashboard/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return resp


# ---- pages -------------------------------------------------------------------------
@router.get("/dashboard")
async def overview(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    calls = await dashboard_data.recent_calls(gw, s[0])
    stats = await dashboard_data.function_stats(gw, s[0], calls)
    return _render(request, s, "overview.html", "overview", stats=stats,
                         apps=gw.deployments_of(s[0].workspace),
                         window=gw.settings.dashboard_window)


@router.get("/dashboard/calls")
async def calls_page(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    calls = await dashboard_data.recent_calls(gw, s[0])
    return _render(request, s, "calls.html", "calls", calls=calls[:500],
                         window=gw.settings.dashboard_window)


@router.get("/dashboard/calls/{call_id}")
async def call_page(request: Request, call_id: str) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    call = await dashboard_data.call_detail(gw, s[0], call_id)
    if call is None:
        return _render(request, s, "error.html", "calls", status=404,
                             message=not_found(gw, call_id).replace(
                                 " not found", f" not found in workspace {s[0].workspace!r}", 1))
    lines = await dashboard_data.call_logs(gw, s[0], call)
    return _render(request, s, "call.html", "calls", call=call, lines=lines,
                         can_cancel=auth.covers(s[0].scope, "invoke"))


@router.post("/dashboard/calls/{call_id}/cancel")
async def cancel_call(request: Request, call_id: str) -> Response:
    s = await _check_csrf(request)
    if s is None:
        return _page(request, "error.html", status=403, p=None, section="",
                     message="cancel refused: sign in again (the form's CSRF token does not "
                             "match this session)")
    p = s[0]
    if not auth.covers(p.scope, "invoke"):
        return _render(request, s, "error.html", "calls", status=403,
                             message=auth.denied("POST", request.url.path, "invoke", p))
    gw: Gateway = request.app.state.gw
    await gw.caller.cancel(p.workspace, call_id)
    return RedirectResponse(f"/dashboard/calls/{urllib.parse.quote(call_id)}", status_code=303)


@router.get("/dashboard/containers")
async def containers_page(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    return _render(request, s, "containers.html", "containers",
                         containers=await dashboard_data.containers(gw, s[0]))


@router.get("/dashboard/agents")
async def agents_page(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    if not s[0].operator:
        return _render(request, s, "error.html", "agents", status=403,
                             message="agents and GPUs are for operator tokens (scope "
                                     f"'operator'); this token has scope {s[0].scope!r}")
    gw: Gateway = request.app.state.gw
    return _render(request, s, "agents.html", "agents",
                         agents=await dashboard_data.agents(gw))


@router.get("/dashboard/billing")
async def billing_page(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    data = await dashboard_data.spend(gw, s[0])
    costs = {r["day"]: r["cost"] for r in data["days"]}
    today = time.time()
    days = [time.strftime("%Y-%m-%d", time.gmtime(today - (29 - i) * 86400)) for i in range(30)]
    series = [(d, float(costs.get(d, 0.0))) for d in days]
    limit = next((b["limit"] for b in data["budgets"] if b["scope"] == "workspace"), None)
    return _render(request, s, "billing.html", "billing", data=data, series=series,
                         limit=limit)


@router.get("/dashboard/webhooks")
async def webhooks_page(request: Request) -> Response:
    s = await _session(request)
    if s is None:
        return _to_login(request)
    gw: Gateway = request.app.state.gw
    return _render(request, s, "webhooks.html", "webhooks",
                         deliveries=await dashboard_data.webhook_deliveries(gw, s[0]))


#: Every route of this module, as scopes.py names them: public to the API's token check
#: (the session cookie decides here, page by page).
ROUTES = sorted(f"{method} {route.path}" for route in router.routes
                if isinstance(route, APIRoute) for method in route.methods or ())
