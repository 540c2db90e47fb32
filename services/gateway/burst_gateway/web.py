"""Web endpoints: the gateway's web port, proxying each request to one container.

URL: ``http://HOST:WEB_PORT/{workspace}/{app}/{endpoint}/{path...}``; the app sees
``/{workspace}/{app}/{endpoint}`` as its ASGI ``root_path`` (WSGI ``SCRIPT_NAME``), so its
own ``/docs`` and redirects work. The web port is a site of its own: never the API's.

The path of a request (DESIGN.md: "a web request goes to exactly one container"):

1. The endpoint is found in the deployments the gateway mirrors; a spent hard budget
   answers 402 and a body over ``web_max_body_bytes`` 413, before anything starts.
2. The head and the body's first chunk go as a core NATS request to the function's web
   subject, where the agents holding ready containers of it listen in one queue group:
   one of them answers ``WebAccepted``. "No responders" means no container is ready:
   an ``input.accepted`` signal tells the scheduler (as a call does) and the request is
   held and offered again every ``web_retry_interval`` until one is, up to
   ``web_startup_timeout`` (plus a ``web_server``'s own ``startup_timeout``; then 503).
   Nothing is stored in JetStream, so a request is never replayed once an agent took
   it. An agent that took it with no free slot (it waits there, in order, until a slot
   frees or another agent's container takes it over) says so, and the gateway signals
   too: the scheduler counts requests in flight, which agents report as inputs in
   flight, against ``@burst.concurrent``'s limits, and adds a container when all are
   full. An agent that hands a waiting request on says where (``WebMoved``).
3. The rest of the body streams to the agent's subject for the request; the response
   head and body chunks stream back to this request's inbox and on to the client as
   they come. A client that disconnects sends ``WebCancel`` (the app's task is
   cancelled); an agent silent for ``web_agent_timeout`` (it sends keepalives) is lost:
   502, or a cut response if it had started.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import nats.errors
from starlette.types import Receive, Scope, Send

from burst import wire
from burst.exception import BudgetExceededError, ConflictError, InvalidError
from burst_core import logs, names, tracing
from burst_core.schemas import ContainerEventDecoder, ContainerStopped, DeploymentRecord
from burst_gateway import web_redirect
from burst_gateway.api_traces import wants_trace
from burst_gateway.settings import GatewaySettings

log = logs.get("burst.gateway.web")

#: Request body chunks are sent on in messages of at most this many bytes.
CHUNK = 256 << 10


def base_url(settings: GatewaySettings) -> str:
    return settings.web_url.rstrip("/") or f"http://{settings.host}:{settings.web_port}"


#: Longest DNS label; a longer host label is cut and ends with a hash (as Modal's).
DNS_LABEL_MAX = 63


def host_label(workspace: str, app: str, ep: wire.WebEndpoint) -> str:
    """The first DNS label of an endpoint's host form: ``{workspace}--{label}``, or
    ``{workspace}--{app}-{endpoint}`` without a label (``_`` becomes ``-``), cut to 56
    characters and a 6-character hash of the whole past 63."""
    name = ep.label or f"{app}-{ep.name}"
    label = f"{workspace}--{name}".replace("_", "-").lower()
    if len(label) <= DNS_LABEL_MAX:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:6]
    return f"{label[:DNS_LABEL_MAX - 7]}-{digest}"


def url_of(settings: GatewaySettings, workspace: str, app: str, endpoint: str,
           ep: wire.WebEndpoint | None = None) -> str:
    """The URL an endpoint answers under (``get_web_url()``, ``burst deploy``): the host
    form when a wildcard domain is configured, else the path form."""
    if settings.web_domain and ep is not None:
        scheme, _, netloc = base_url(settings).partition("://")
        port = netloc.rsplit(":", 1)[1] if ":" in netloc else ""
        host = f"{host_label(workspace, app, ep)}.{settings.web_domain}"
        return f"{scheme}://{host}{':' + port if port else ''}"
    return f"{base_url(settings)}/{workspace}/{app}/{endpoint}"


def check_hosts(settings: GatewaySettings, workspace: str, app: str,
                functions: list[wire.FunctionSpec], deployments: list[DeploymentRecord]) -> None:
    """With a wildcard domain, an endpoint's host must not be another app's (labels are
    per workspace there): ConflictError naming both."""
    if not settings.web_domain:
        return
    taken = {host_label(d.workspace, d.app, ep): d.app for d in deployments if d.app != app
             for f in d.functions for ep in f.web}
    own: dict[str, str] = {}
    for fn in functions:
        for ep in fn.web:
            host = host_label(workspace, app, ep)
            if host in own:  # say greeter_greet and Greeter.greet, or a label like them
                raise InvalidError(
                    f"app {app!r}: web endpoints {own[host]!r} and {ep.name!r} would both "
                    f"answer at {host}.{settings.web_domain} (give one of them another "
                    "label=)")
            own[host] = ep.name
            if host in taken:
                raise ConflictError(
                    f"web endpoint {ep.name!r} of app {app!r}: its host "
                    f"{host}.{settings.web_domain} is taken by app {taken[host]!r} of "
                    f"workspace {workspace!r} (choose another label=)")


def resolve_host(host: str, domain: str, deployments: list[DeploymentRecord],
                 ) -> tuple[DeploymentRecord, wire.FunctionSpec, wire.WebEndpoint] | None:
    """The endpoint a host-form name (``Host`` header, port stripped) answers for, among
    the deployments of its workspace; None when the host is not one of the domain."""
    host = host.lower().rstrip(".")
    if not host.endswith("." + domain.lower()):
        return None
    first = host[:-len(domain) - 1]
    for dep in deployments:
        for fn in dep.functions:
            for ep in fn.web:
                if host_label(dep.workspace, dep.app, ep) == first:
                    return dep, fn, ep
    return None


def check_endpoints(app: str, functions: list[wire.FunctionSpec]) -> None:
    """Deploy-time checks: each endpoint's URL part is valid and answers one endpoint."""
    seen: dict[str, str] = {}
    for fn in functions:
        for ep in fn.web:
            if ep.label:
                wire.check_label(ep.label)
            else:
                wire.check_ident("web endpoint", ep.name)
            if ep.kind not in wire.WEB_KINDS:
                raise ValueError(f"function {fn.name!r}: web endpoint kind {ep.kind!r} is "
                                 f"not one of {', '.join(wire.WEB_KINDS)}")
            if ep.kind == "web_server" and not 1 <= ep.port <= 65535:
                raise ValueError(f"function {fn.name!r}: web_server port {ep.port} is "
                                 "outside 1..65535")
            if ep.name in seen:
                raise ValueError(f"app {app!r}: web endpoints of {seen[ep.name]!r} and "
                                 f"{fn.name!r} both answer under {ep.name!r} (give one of "
                                 "them another label=)")
            seen[ep.name] = fn.name


class _ClientGone(Exception):
    """The client went away while its request was held (no container took it yet)."""


class _Refused(Exception):
    """An answer of the gateway itself (no container serves the request)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


async def _answer(send: Send, status: int, type_: str, message: str) -> None:
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class StartFailures:
    """Containers that failed to start (their ``container.stopped`` events), told to the
    requests held for their function: such a request is answered with the reason at once
    instead of waiting out ``web_startup_timeout``."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Future[str]]] = {}
        self._sub: Any = None
        self._lock = asyncio.Lock()

    async def watch(self, nc: Any, fn_key: str) -> asyncio.Future[str]:
        async with self._lock:
            if self._sub is None:
                self._sub = await nc.subscribe(names.container_event_subject("stopped", "*"),
                                               cb=self._on_stopped)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(fn_key, set()).add(fut)
        return fut

    def unwatch(self, fn_key: str, fut: asyncio.Future[str]) -> None:
        waiters = self.waiters.get(fn_key)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self.waiters[fn_key]

    async def _on_stopped(self, msg: Any) -> None:
        try:
            event = ContainerEventDecoder.decode(msg.data)
        except Exception:
            return
        if not isinstance(event, ContainerStopped) or event.reason != "failed_to_start":
            return
        fn_key = names.function_key(event.workspace, event.app, event.function)
        for fut in self.waiters.get(fn_key, ()):
            if not fut.done():
                fut.set_result(event.detail.strip().splitlines()[0] if event.detail.strip()
                               else "failed to start")


class Inboxes:
    """One subscription for the response frames of every request of this gateway
    (``<prefix>.<n>`` per request), rather than one subscription each: a request costs
    no SUB/UNSUB and no subscription task. A message holds one frame, or a list of
    frames the agent sent together."""

    def __init__(self) -> None:
        self.routes: dict[str, asyncio.Queue[Any]] = {}
        self._prefix = ""
        self._sub: Any = None
        self._n = 0
        self._lock = asyncio.Lock()

    async def open(self, nc: Any) -> tuple[str, asyncio.Queue[Any]]:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    prefix = nc.new_inbox()
                    self._sub = await nc.subscribe(prefix + ".*", cb=self._on_msg)
                    self._prefix = prefix
        self._n += 1
        token = str(self._n)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.routes[token] = queue
        return f"{self._prefix}.{token}", queue

    def close(self, subject: str) -> None:
        self.routes.pop(subject.rsplit(".", 1)[1], None)

    async def _on_msg(self, msg: Any) -> None:
        queue = self.routes.get(msg.subject.rsplit(".", 1)[1])
        if queue is None:
            return
        try:
            frames = wire.decode_web(msg.data)
        except Exception as e:
            log.warning("web_frame_undecodable", error=repr(e))
            return
        for frame in frames:
            queue.put_nowait(frame)


class WebProxy:
    """The ASGI app of the web port; ``api`` is the API's FastAPI application, whose
    lifespan starts the :class:`~burst_gateway.state.Gateway` this one uses."""

    def __init__(self, api: Any, settings: GatewaySettings) -> None:
        self.api = api
        self.settings = settings
        self.served = 0
        self.failures = StartFailures()
        self.inboxes = Inboxes()
        self.detached = web_redirect.Detachments(settings.web_request_timeout,
                                                 settings.web_agent_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the API server's lifespan starts the gateway
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] not in ("http", "websocket"):
            return
        try:
            if scope["type"] == "http" and scope["path"].startswith(web_redirect.PREFIX):
                gw = getattr(self.api.state, "gw", None)
                await self.detached.answer(scope["path"], send, getattr(gw, "nc", None))
                return
            await self._serve(scope, receive, send)
        except web_redirect.Redirected as e:
            await web_redirect.redirect(send, e.location)
        except _Refused as e:
            if scope["type"] == "websocket":  # before the accept: the handshake gets 403
                await send({"type": "websocket.close", "code": 1008,
                            "reason": e.message[:120]})
            else:
                await _answer(send, e.status, e.type, e.message)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = getattr(self.api.state, "gw", None)
        nc = getattr(gw, "nc", None)
        if gw is None or nc is None or not nc.is_connected:
            raise _Refused(503, "Unavailable", "the gateway is not connected to the cluster")
        path: str = scope["path"]
        domain = self.settings.web_domain
        if domain:  # Modal's host forms, when the wildcard domain is configured
            # (DNS names are case-insensitive, and may end with the root's dot.)
            host = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                         if k == b"host"), "").rsplit(":", 1)[0].lower().rstrip(".")
            ws = host.partition("--")[0]
            hit = resolve_host(host, domain, gw.deployments_of(ws)) if ws else None
            if hit is not None:
                dep, fn, ep = hit
                await self._forward(gw, scope, receive, send, dep.workspace, dep.app, fn, ep,
                                    root_path="", rest=path,
                                    raw_path=scope.get("raw_path") or path.encode())
                return
            if host.endswith("." + domain.lower()):
                raise _Refused(404, "NotFound", f"no web endpoint answers at {host!r}")
        parts = path.split("/", 4)
        if len(parts) < 4 or not all(parts[1:4]):
            raise _Refused(404, "NotFound", f"no web endpoint at {path!r}: URLs are "
                           "/{workspace}/{app}/{endpoint}/...")
        ws, app, name = parts[1], parts[2], parts[3]
        rest = "/" + parts[4] if len(parts) > 4 else "/"
        try:
            for kind, value in (("workspace", ws), ("app", app)):
                wire.check_ident(kind, value)
        except ValueError as e:
            raise _Refused(404, "NotFound", f"no web endpoint at {path!r}: {e}") from None
        dep = await gw.deployment(ws, app)
        found = None if dep is None else next(
            ((fn, ep) for fn in dep.functions for ep in fn.web if ep.name == name), None)
        if found is None:
            raise _Refused(404, "NotFound", f"no web endpoint {name!r} in app {app!r} of "
                           f"workspace {ws!r}")
        fn, ep = found
        await self._forward(gw, scope, receive, send, ws, app, fn, ep,
                            root_path=f"/{ws}/{app}/{name}", rest=rest,
                            raw_path=scope.get("raw_path") or path.encode())

    async def _forward(self, gw: Any, scope: Scope, receive: Receive, send: Send, ws: str,
                       app: str, fn: wire.FunctionSpec, ep: wire.WebEndpoint, root_path: str,
                       rest: str, raw_path: bytes) -> None:
        if ep.requires_proxy_auth:  # before anything starts: a refused request starts nothing
            scope = await self._proxy_auth(gw, scope, ws)
        try:
            # A run of app X is covered by X's budgets (its deployment carries the name).
            dep = await gw.deployment(ws, app)
            await gw.caller.guard.check(ws, (dep.name or dep.app) if dep else app, fn.name)
        except BudgetExceededError as e:
            raise _Refused(402, e.type, str(e)) from None
        limit = self.settings.web_max_body_bytes
        for k, v in scope.get("headers", []) if scope["type"] == "http" else ():
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise _Refused(413, "PayloadTooLarge", f"the request body ({int(v)} bytes) "
                               f"is above the limit of {limit} bytes")
        # A web_server's own startup_timeout (waiting for its port) comes on top.
        startup = self.settings.web_startup_timeout + (
            ep.startup_timeout if ep.kind == "web_server" else 0.0)
        ex = _Exchange(self.settings, gw, self, names.function_key(ws, app, fn.name),
                       ep.name, root_path, rest, raw_path, scope, receive, send, startup)
        ctx = self._trace(gw, scope) if gw.tracing.enabled else None
        if ctx is None:
            await ex.run()
        else:
            await self._run_traced(gw, ex, ctx, ws, app, fn.name)
        self.served += 1

    @staticmethod
    def _trace(gw: Any, scope: Scope) -> Any:
        """The context a traced request's span starts in (``X-Burst-Trace: 1``, a sampled
        ``traceparent``, or the sample share drew it), or None (untraced: no header is
        parsed)."""
        if scope["type"] != "http":
            return None
        raw = [(k, v) for k, v in scope.get("headers", []) if k in _TRACE_HEADERS]
        if not raw and not gw.tracing.sample:
            return None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
        try:
            forced = wants_trace(headers)
        except InvalidError as e:
            raise _Refused(400, e.type, str(e)) from None
        return gw.tracing.decide(headers, forced)

    async def _run_traced(self, gw: Any, ex: _Exchange, ctx: Any, ws: str, app: str,
                          fn: str) -> None:
        """A traced request: a ``gateway.web`` span (kept under the request's id, which
        its response's ``X-Burst-Request-Id`` header names), its context on the request
        to the agent and on the scheduler's signal."""
        span = gw.tracing.span("gateway.web", ctx, ws, ex.req_id, attributes={
            "burst.app": app, "burst.function": fn, "burst.endpoint": ex.endpoint,
            "http.request.method": ex.scope.get("method", "GET")})
        ex.trace_headers = tracing.headers_of(span, ex.req_id)
        token = tracing.outgoing.set(ex.trace_headers)
        try:
            await ex.run()
        except _Refused as e:
            span.set_attribute("http.response.status_code", e.status)
            raise
        finally:
            tracing.outgoing.reset(token)
            span.end()


    async def _proxy_auth(self, gw: Any, scope: Scope, ws: str) -> Scope:
        """Check a proxy-auth token of the endpoint's workspace (``Burst-Key`` and
        ``Burst-Secret``, or Modal's ``Modal-Key``/``Modal-Secret``); 401 otherwise. The
        app gets the request without them."""
        headers = scope.get("headers", [])
        got = {k: v.decode("latin-1") for k, v in headers if k in _PROXY_AUTH_HEADERS}
        key = got.get(b"burst-key") or got.get(b"modal-key", "")
        secret = got.get(b"burst-secret") or got.get(b"modal-secret", "")
        if not key or not secret:
            raise _Refused(401, "Unauthenticated", "this endpoint requires proxy auth: send "
                           "the Burst-Key and Burst-Secret headers of a token made with "
                           "`burst token create --proxy-auth`")
        owner = await gw.tokens.proxy_auth(key, secret)
        if owner != ws:
            raise _Refused(401, "Unauthenticated", "invalid proxy-auth token for this "
                           "endpoint (unknown, wrong secret, or of another workspace)")
        return {**scope, "headers": [(k, v) for k, v in headers
                                     if k not in _PROXY_AUTH_HEADERS]}


#: The request headers that may ask for a trace (burst_core.tracing).
_TRACE_HEADERS = frozenset({tracing.TRACEPARENT.encode(), tracing.TRACE_REQUEST_HEADER.encode()})
#: The headers of a proxy-auth token (never passed on to the app).
_PROXY_AUTH_HEADERS = frozenset({b"burst-key", b"burst-secret", b"modal-key", b"modal-secret"})


class _Exchange:
    """One request, from the client to an agent and its response back."""

    def __init__(self, settings: GatewaySettings, gw: Any, proxy: WebProxy,
                 fn_key: str, endpoint: str,
                 root_path: str, path: str, raw_path: bytes, scope: Scope, receive: Receive,
                 send: Send, startup_timeout: float) -> None:
        self.s = settings
        #: How long the request is held while no container is ready.
        self.startup_timeout = startup_timeout
        self.gw = gw
        self.failures = proxy.failures
        self.inboxes = proxy.inboxes
        self.detachments = proxy.detached
        #: Past this (loop time) with no response started: 303 (web_redirect.py).
        self.redirect_at = asyncio.get_running_loop().time() + settings.web_request_timeout
        self.detached = False
        self.fn_key = fn_key
        self.endpoint = endpoint
        self.root_path = root_path
        self.path = path
        self.raw_path = raw_path
        self.scope = scope
        self.receive = receive
        self.send = send
        self.req_id = "wr-" + uuid.uuid4().hex
        #: Frames from the agent; None once the client went away.
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.disconnected = False
        self.too_large = False
        self.started = False
        self.complete = False
        #: Where the body chunks and cancel go: the subject of the agent that took the
        #: request (another agent's once it is moved there, ``WebMoved``).
        self.subject = ""
        #: The client's next ASGI message once its whole body came: a disconnect while
        #: the request is held (no container ready) ends it before any container runs it.
        self.watch: asyncio.Future[Any] | None = None
        #: A traced request's trace headers (on the request to the agent), else None.
        self.trace_headers: dict[str, str] | None = None

    def _head(self, inbox: str, body: bytes = b"", more: bool = False) -> wire.WebRequest:
        s = self.scope
        websocket = s["type"] == "websocket"
        return wire.WebRequest(
            req_id=self.req_id, endpoint=self.endpoint, method=s.get("method", "GET"),
            path=self.path, raw_path=self.raw_path, query_string=s.get("query_string", b""),
            root_path=self.root_path, headers=[(k, v) for k, v in s.get("headers", [])],
            scheme=s.get("scheme", "ws" if websocket else "http"),
            http_version=s.get("http_version", "1.1"),
            client=tuple(s["client"]) if s.get("client") else None,
            server=tuple(s["server"]) if s.get("server") and s["server"][1] else None,
            body=body, more_body=more, reply=inbox, websocket=websocket)

    async def run(self) -> None:
        inbox, self.frames = await self.inboxes.open(self.gw.nc)
        self.inbox = inbox
        pump: asyncio.Task[None] | None = None
        try:
            first = await self.receive()
            if first["type"] == "http.disconnect":
                return
            body = first.get("body", b"")
            more = bool(first.get("more_body", False))
            if len(body) > self.s.web_max_body_bytes:
                raise _Refused(413, "PayloadTooLarge", "the request body is above the limit "
                               f"of {self.s.web_max_body_bytes} bytes")
            if first["type"] == "websocket.connect":
                accepted = await self._hand_over(self._head(inbox))
                self.subject = accepted.subject
                pump = asyncio.create_task(self._pump_websocket())
                await self._relay_websocket()
                return
            # The head carries at most CHUNK of the body (a NATS message stays small);
            # the rest of a large first chunk follows as body messages.
            head_body, rest = body[:CHUNK], body[CHUNK:]
            if not more:
                self.watch = asyncio.ensure_future(self.receive())
            try:
                accepted = await self._hand_over(self._head(inbox, head_body,
                                                            more or bool(rest)))
            except _ClientGone:
                log.info("web_request_abandoned", fn_key=self.fn_key, req_id=self.req_id)
                return
            self.subject = accepted.subject
            pump = asyncio.create_task(self._pump_body(len(body), more, rest))
            await self._relay()
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            if self.watch is not None and not self.watch.done():
                self.watch.cancel()
            if not self.detached:  # else the detached request closes it when complete
                self.inboxes.close(inbox)

    async def _hand_over(self, head: wire.WebRequest) -> wire.WebAccepted:
        """Give the request to an agent holding a ready container, waiting while none
        is ready (scale from zero) up to ``web_startup_timeout``."""
        data = wire.encode(head)
        subject = names.web_subject(self.fn_key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        failed: asyncio.Future[str] | None = None
        try:
            while True:
                try:
                    accepted = await self._offer(subject, data)
                except nats.errors.NoRespondersError:
                    # No container is ready: the scheduler places one (as for a call).
                    await self.gw.caller.signals.accepted(self.fn_key, self.req_id, time.time())
                else:
                    if accepted.queued:  # every container is full: the scheduler adds one
                        await self.gw.caller.signals.accepted(self.fn_key, self.req_id, time.time())
                    return accepted
                if loop.time() >= deadline:
                    raise _Refused(503, "Unavailable", "no container of the endpoint became "
                                   f"ready within {self.startup_timeout:g} s")
                if failed is None:  # held while a container starts
                    failed = await self.failures.watch(self.gw.nc, self.fn_key)
                watch = self.watch
                await asyncio.wait({failed} if watch is None else {failed, watch},
                                   timeout=self.s.web_retry_interval)
                if watch is not None and watch.done() and (
                        watch.cancelled() or watch.exception() is not None
                        or watch.result()["type"] == "http.disconnect"):
                    raise _ClientGone
                if failed.done():
                    raise _Refused(503, "Unavailable", "the endpoint's container failed to "
                                   f"start: {failed.result()}")
        finally:
            if failed is not None:
                self.failures.unwatch(self.fn_key, failed)

    async def _offer(self, subject: str, data: bytes) -> wire.WebAccepted:
        """One offer of the request to the agents; NoRespondersError when none listens."""
        try:
            msg = await self.gw.nc.request(subject, data, timeout=self.s.web_accept_timeout,
                                           headers=self.trace_headers)
        except (nats.errors.TimeoutError, TimeoutError):
            # An agent may hold it: never offered again (it is never replayed).
            raise _Refused(502, "BadGateway", "the agent did not take the request within "
                           f"{self.s.web_accept_timeout:g} s") from None
        frame = wire.web_decoder.decode(msg.data)
        if not isinstance(frame, wire.WebAccepted):
            raise _Refused(502, "BadGateway", "the agent answered the request with "
                           f"{type(frame).__name__}")
        if not frame.subject:  # not taken: its containers were just gone
            raise nats.errors.NoRespondersError
        return frame

    async def _pump_body(self, sent: int, more: bool, rest: bytes = b"") -> None:
        """The rest of the request body to the agent, then wait for the client to go
        away (ASGI's ``http.disconnect``): then the request is cancelled."""
        nc = self.gw.nc
        watch, self.watch = self.watch, None
        for i in range(0, len(rest), CHUNK):  # the first chunk's part the head did not carry
            await nc.publish(self.subject, wire.encode(wire.WebRequestBody(
                req_id=self.req_id, body=rest[i:i + CHUNK],
                more_body=more or i + CHUNK < len(rest))))
        while True:
            if watch is not None:  # read while the request was held
                message, watch = await watch, None
            else:
                message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.complete:
                    self._gone()
                    await nc.publish(self.subject,
                                     wire.encode(wire.WebCancel(req_id=self.req_id)))
                return
            if not more:
                continue
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            sent += len(body)
            if sent > self.s.web_max_body_bytes:
                self.too_large = True
                await nc.publish(self.subject, wire.encode(
                    wire.WebCancel(req_id=self.req_id, reason="too large")))
                self._gone()
                return
            for i in range(0, max(len(body), 1), CHUNK):
                piece = body[i:i + CHUNK]
                await nc.publish(self.subject, wire.encode(wire.WebRequestBody(
                    req_id=self.req_id, body=piece,
                    more_body=more or i + CHUNK < len(body))))

    def _gone(self) -> None:
        """The client went away: the relay stops at its next frame."""
        self.disconnected = True
        self.frames.put_nowait(None)

    async def _next_frame(self, timeout: float | None = None) -> Any:
        """The next frame from the agent; None once the client went away."""
        if not self.frames.empty():
            frame = self.frames.get_nowait()
        else:
            try:
                frame = await asyncio.wait_for(self.frames.get(),
                                               timeout or self.s.web_agent_timeout)
            except TimeoutError:
                raise TimeoutError from None
        if isinstance(frame, wire.WebMoved):  # another agent's container runs it now
            self.subject = frame.subject
        return frame

    async def _detach(self) -> None:
        """No response within ``web_request_timeout``: the request runs on, its response
        kept for the 303's location (web_redirect.py)."""
        await self.detachments.listen(self.gw.nc)
        d, location = self.detachments.add(self.req_id)
        self.detached = True
        self.detachments.keep(asyncio.create_task(self._collect(d)))
        log.info("web_request_redirected", fn_key=self.fn_key, req_id=self.req_id)
        raise web_redirect.Redirected(location)

    async def _collect(self, d: web_redirect.Detached) -> None:
        limit = self.s.web_max_body_bytes
        try:
            while True:
                try:
                    frame = await self._next_frame()
                except TimeoutError:
                    d.error = (502, "BadGateway", "the agent serving the request was lost "
                               f"(silent for {self.s.web_agent_timeout:g} s)")
                    return
                if isinstance(frame, wire.WebResponseStart):
                    d.status, d.headers = frame.status, [(bytes(k), bytes(v))
                                                         for k, v in frame.headers]
                elif isinstance(frame, wire.WebResponseBody):
                    d.body += frame.body
                    if len(d.body) > limit:
                        d.error = (502, "BadGateway", "the response is too large to keep for "
                                   f"a redirected request (above {limit} bytes)")
                        return
                elif isinstance(frame, wire.WebEnd):
                    if not d.status:
                        status = frame.status or 502
                        d.error = (status, "BadGateway" if status == 502 else "Internal",
                                   frame.error or "the app sent no response")
                    return
        finally:
            self.inboxes.close(self.inbox)
            d.done.set()
            self.detachments.finished(self.req_id)

    async def _relay(self) -> None:
        """Frames from the agent to the client, as they come."""
        loop = asyncio.get_running_loop()
        while True:
            wait = None if self.started else max(
                0.001, min(self.s.web_agent_timeout, self.redirect_at - loop.time()))
            try:
                frame = await self._next_frame(wait)
            except TimeoutError:
                if not self.started and loop.time() >= self.redirect_at - 0.001:
                    await self._detach()  # raises Redirected: the client gets the 303
                if wait is not None and wait < self.s.web_agent_timeout:
                    continue  # the redirect's time came closer than the agent's timeout
                log.warning("web_agent_lost", fn_key=self.fn_key, req_id=self.req_id)
                if not self.started:
                    raise _Refused(502, "BadGateway", "the agent serving the request was lost "
                                   f"(silent for {self.s.web_agent_timeout:g} s)") from None
                raise RuntimeError("the agent serving the request was lost") from None
            if frame is None:  # the client went away
                if self.too_large and not self.started:
                    raise _Refused(413, "PayloadTooLarge", "the request body is above the "
                                   f"limit of {self.s.web_max_body_bytes} bytes")
                return
            if isinstance(frame, wire.WebResponseStart):
                self.started = True
                headers = [(bytes(k), bytes(v)) for k, v in frame.headers]
                if self.trace_headers is not None:  # where `burst trace` finds it
                    headers.append((b"x-burst-request-id", self.req_id.encode()))
                await self.send({"type": "http.response.start", "status": frame.status,
                                 "headers": headers})
            elif isinstance(frame, wire.WebResponseBody):
                if not frame.more_body:
                    self.complete = True
                await self.send({"type": "http.response.body", "body": frame.body,
                                 "more_body": frame.more_body})
            elif isinstance(frame, wire.WebEnd):
                if self.too_large and not self.started:
                    raise _Refused(413, "PayloadTooLarge", "the request body is above the "
                                   f"limit of {self.s.web_max_body_bytes} bytes")
                if not self.started:
                    status = frame.status or 502
                    raise _Refused(status, "BadGateway" if status == 502 else "Internal",
                                   frame.error or "the app sent no response")
                if not self.complete:
                    if frame.error:  # cut the response: the client sees it incomplete
                        raise RuntimeError(f"the app failed while responding: {frame.error}")
                    await self.send({"type": "http.response.body", "body": b""})
                return

    # ---- WebSockets ------------------------------------------------------------------
    async def _pump_websocket(self) -> None:
        """The client's messages to the app; its leaving closes the app's side."""
        nc = self.gw.nc
        while True:
            message = await self.receive()
            if message["type"] == "websocket.receive":
                await nc.publish(self.subject, wire.encode(wire.WebSocketMessage(
                    req_id=self.req_id, text=message.get("text"), data=message.get("bytes"))))
            elif message["type"] == "websocket.disconnect":
                self._gone()
                await nc.publish(self.subject, wire.encode(wire.WebSocketClose(
                    req_id=self.req_id, code=int(message.get("code", 1005)),
                    reason=str(message.get("reason") or ""))))
                return

    async def _relay_websocket(self) -> None:
        """The app's side of a WebSocket to the client."""
        while True:
            try:
                frame = await self._next_frame()
            except TimeoutError:
                log.warning("web_agent_lost", fn_key=self.fn_key, req_id=self.req_id)
                await self.send({"type": "websocket.close", "code": 1011,
                                 "reason": "the agent serving it was lost"})
                return
            if frame is None:
                return
            if isinstance(frame, wire.WebSocketAccept):
                self.started = True
                await self.send({"type": "websocket.accept", "subprotocol": frame.subprotocol,
                                 "headers": [(bytes(k), bytes(v)) for k, v in frame.headers]})
            elif isinstance(frame, wire.WebSocketMessage):
                await self.send({"type": "websocket.send", "text": frame.text,
                                 "bytes": frame.data})
            elif isinstance(frame, wire.WebSocketClose):
                self.complete = True
                await self.send({"type": "websocket.close", "code": frame.code,
                                 "reason": frame.reason})
            elif isinstance(frame, wire.WebEnd):
                if not self.complete:  # refused before accepting (403), or failed after
                    await self.send({"type": "websocket.close",
                                     "code": 1011 if self.started else 1008,
                                     "reason": frame.error[:120]})
                return
