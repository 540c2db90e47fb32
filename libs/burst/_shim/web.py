"""Web endpoints inside the container: the ASGI app of each endpoint (``web_server``: see
web_server.py), fed by the agent's ``WebRequest`` frames, answering with
``WebResponseStart``/``WebResponseBody``/``WebEnd``.

Imported by the shim only for a function with web endpoints, so a web framework (FastAPI)
is imported only there. Requests run as tasks of the runner's event loop (its own
thread); frames from the main loop reach them with ``call_soon_threadsafe``.

Invariants:
- every request the shim got ends with exactly one ``WebEnd`` (also when it fails or is
  cancelled), so the agent frees its slot;
- an exception of the app before its response started gives a plain 500 (as uvicorn
  would); its traceback goes to the logs, never into the response;
- a ``WebCancel`` (the client went away) cancels the request's task and makes its
  ``receive()`` answer ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from burst import _context, wire

#: Response bodies travel in frames of at most this many bytes (a NATS message each).
CHUNK = 256 << 10

Scope = dict[str, Any]


def _not_asgi(what: str, obj: object) -> TypeError:
    return TypeError(f"{what} returned {type(obj).__name__} {obj!r:.80}, not an ASGI app "
                     "(an async callable taking scope, receive and send)")


def _is_asgi(obj: object) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - an instance's async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def build_app(ep: wire.WebEndpoint, fn: Any) -> Any:
    """The ASGI app serving ``ep``; ``fn`` is the user's function (or bound method)."""
    what = f"@burst.{'asgi_app' if ep.kind == 'asgi' else 'wsgi_app'} function {ep.name!r}"
    if ep.kind == "fastapi":
        from fastapi import FastAPI

        app = FastAPI(docs_url="/docs" if ep.docs else None, redoc_url=None,
                      openapi_url="/openapi.json" if ep.docs else None)
        app.add_api_route("/", fn, methods=[ep.http_method])
        return app
    if ep.kind == "web_server":
        from burst._shim import web_server

        fn()  # starts the server (a subprocess, a thread)
        web_server.wait_listening(ep.port, ep.startup_timeout or 5.0)
        return web_server.PortProxy(ep.port)
    obj = fn()
    if inspect.isawaitable(obj):
        raise TypeError(f"{what} is async: make it a plain def that returns the app")
    if ep.kind == "wsgi":
        if not callable(obj):
            raise TypeError(f"{what} returned {type(obj).__name__}, not a WSGI app")
        from burst._shim.wsgi import WsgiApp

        return WsgiApp(obj)
    if not _is_asgi(obj):
        raise _not_asgi(what, obj)
    return obj


@dataclass
class _Request:
    head: wire.WebRequest
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    first_taken: bool = False
    started: bool = False
    cancelled: bool = False
    #: Frames held back to go out together: a response's start until its first body
    #: chunk, a complete response's last chunk until the end.
    held: list[Any] = field(default_factory=list)


class WebHost:
    """The web endpoints of this container and their requests in flight."""

    def __init__(self, endpoints: list[wire.WebEndpoint], target: Any, chan: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.chan = chan
        self.loop = loop
        self.apps: dict[str, Any] = {}
        for ep in endpoints:
            fn = (getattr(target.instance({}), ep.method) if ep.method else target.fn)
            self.apps[ep.name] = build_app(ep, fn)
        self.requests: dict[str, _Request] = {}
        for app in self.apps.values():
            asyncio.run_coroutine_threadsafe(self._lifespan(app), loop)

    # ---- from the main loop (another thread) -----------------------------------------
    def on_frame(self, msg: Any) -> None:
        self.loop.call_soon_threadsafe(self._on_frame, msg)

    def _on_frame(self, msg: Any) -> None:
        if isinstance(msg, wire.WebRequest):
            req = _Request(msg)
            self.requests[msg.req_id] = req
            req.task = self.loop.create_task(self._serve(req))
            return
        pending = self.requests.get(msg.req_id)
        if pending is None:
            return
        req = pending
        if isinstance(msg, wire.WebRequestBody):
            req.queue.put_nowait({"type": "http.request", "body": msg.body,
                                  "more_body": msg.more_body})
        elif isinstance(msg, wire.WebSocketMessage):
            req.queue.put_nowait({"type": "websocket.receive", "text": msg.text,
                                  "bytes": msg.data})
        elif isinstance(msg, wire.WebSocketClose):
            req.queue.put_nowait({"type": "websocket.disconnect", "code": msg.code,
                                  "reason": msg.reason})
        elif isinstance(msg, wire.WebCancel):
            req.cancelled = True
            req.queue.put_nowait({"type": "websocket.disconnect", "code": 1006}
                                 if req.head.websocket else {"type": "http.disconnect"})
            if req.task is not None:
                req.task.cancel()

    # ---- serving ---------------------------------------------------------------------
    async def _lifespan(self, app: Any) -> None:
        """Run the app's lifespan startup (FastAPI's startup events); an app without
        lifespan support simply raises, which is fine."""
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        events.put_nowait({"type": "lifespan.startup"})

        async def receive() -> dict[str, Any]:
            return await events.get()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                print(f"web app startup failed: {message.get('message', '')}", file=sys.stderr)

        try:
            await app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                       "state": {}}, receive, send)
        except Exception:
            pass

    def _scope(self, head: wire.WebRequest) -> Scope:
        path = head.root_path + (head.path or "/")
        extra: Scope = {}
        if head.websocket:
            protocols = [p.strip() for k, v in head.headers
                         if bytes(k).lower() == b"sec-websocket-protocol"
                         for p in bytes(v).decode("latin-1").split(",")]
            extra = {"subprotocols": protocols}
        return {
            **extra, "type": "websocket" if head.websocket else "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version, "method": head.method, "scheme": head.scheme,
            "path": path, "raw_path": head.raw_path or path.encode(),
            "query_string": head.query_string, "root_path": head.root_path,
            "headers": [(bytes(k), bytes(v)) for k, v in head.headers],
            "client": list(head.client) if head.client else None,
            "server": list(head.server) if head.server else None, "state": {},
        }

    def _flush(self, req: _Request) -> None:
        if req.held and req.head.req_id in self.requests:
            self.chan.send_many(req.held)
            req.held.clear()

    async def _serve(self, req: _Request) -> None:
        head = req.head
        _context.current_call.set(head.req_id)  # what the app prints is tagged with it
        app = self.apps.get(head.endpoint)
        error = ""

        async def receive() -> dict[str, Any]:
            if not req.first_taken:
                req.first_taken = True
                if head.websocket:
                    return {"type": "websocket.connect"}
                return {"type": "http.request", "body": head.body,
                        "more_body": head.more_body}
            return await req.queue.get()

        async def send(message: dict[str, Any]) -> None:
            if req.cancelled:
                raise OSError("the client disconnected")
            kind = message["type"]
            if kind == "websocket.accept":
                req.started = True
                self.chan.send(wire.WebSocketAccept(
                    req_id=head.req_id, subprotocol=message.get("subprotocol"),
                    headers=[(bytes(k), bytes(v)) for k, v in message.get("headers", [])]))
            elif kind == "websocket.send":
                self.chan.send(wire.WebSocketMessage(req_id=head.req_id,
                                                      text=message.get("text"),
                                                      data=message.get("bytes")))
            elif kind == "websocket.close":
                req.started = True
                self.chan.send(wire.WebSocketClose(req_id=head.req_id,
                                                    code=int(message.get("code", 1000)),
                                                    reason=str(message.get("reason") or "")))
            elif kind == "http.response.start":
                req.started = True
                req.held.append(wire.WebResponseStart(
                    req_id=head.req_id, status=int(message["status"]),
                    headers=[(bytes(k), bytes(v)) for k, v in message.get("headers", [])]))
                # Out with the body when it follows at once, else on the next loop turn:
                # a response that streams gets its head before its first chunk is made.
                self.loop.call_soon(self._flush, req)
            elif kind == "http.response.body":
                body = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                for i in range(0, max(len(body), 1), CHUNK):
                    last = i + CHUNK >= len(body)
                    req.held.append(wire.WebResponseBody(req_id=head.req_id,
                                                         body=body[i:i + CHUNK],
                                                         more_body=more or not last))
                    if more or not last:  # streamed: out as produced
                        self.chan.send_many(req.held)
                        req.held.clear()

        try:
            if app is None:
                raise LookupError(f"this container serves no web endpoint {head.endpoint!r}")
            await app(self._scope(head), receive, send)
        except asyncio.CancelledError:
            error = "cancelled"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if not req.cancelled:
                print(f"Exception in web endpoint {head.endpoint!r} "
                      f"({head.method} {head.root_path}{head.path}):", file=sys.stderr)
                traceback.print_exc()
                if not req.started and not head.websocket:  # as an ASGI server answers
                    req.started = True
                    self.chan.send(wire.WebResponseStart(
                        req_id=head.req_id, status=500,
                        headers=[(b"content-type", b"text/plain; charset=utf-8")]))
                    self.chan.send(wire.WebResponseBody(req_id=head.req_id,
                                                         body=b"Internal Server Error"))
        finally:
            self.requests.pop(head.req_id, None)
            sys.stdout.flush()
            sys.stderr.flush()
            self.chan.send_many([*req.held, wire.WebEnd(req_id=head.req_id, error=error,
                                                        status=0 if req.started else 500)])
