"""``@burst.wsgi_app`` inside the container: a WSGI app (PEP 3333) served as ASGI, with the
standard library only (so a Docker image needs nothing beyond the app's own framework).

Each request reads its body whole (the gateway caps it), then runs the app on a thread of
the event loop's executor; the response streams back as the app's iterable yields. The
endpoint's URL prefix is ``SCRIPT_NAME``, the rest ``PATH_INFO``.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable
from typing import Any


def environ_of(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    root = scope.get("root_path", "")
    path = scope["path"]
    if root and path.startswith(root):
        path = path[len(root):]
    server = scope.get("server") or ("localhost", 80)
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        # PEP 3333: native strings holding the bytes as latin-1.
        "SCRIPT_NAME": root.encode().decode("latin-1"),
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    if scope.get("client"):
        env["REMOTE_ADDR"] = str(scope["client"][0])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name
        env[key] = f"{env[key]},{value}" if key in env else value
    env.setdefault("CONTENT_LENGTH", str(len(body)))
    return env


async def read_body(receive: Any) -> bytes | None:
    """An ASGI request's whole body, or None when the client disconnects first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


class WsgiApp:
    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:  # the client left before its request was whole
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        state: dict[str, Any] = {}

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None and state.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            state["status"] = int(status.split(" ", 1)[0])
            state["headers"] = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in headers]
            return lambda data: put("body", bytes(data))  # the legacy write()

        def run() -> None:
            try:
                result = self.app(environ_of(scope, body), start_response)
                try:
                    for chunk in result:
                        if chunk:
                            put("body", bytes(chunk))
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                put("end", None)
            except BaseException as e:  # raised in the event loop, as an ASGI app would
                put("error", e)

        loop.run_in_executor(None, run)
        while True:
            kind, value = await events.get()
            if kind == "error":
                raise value
            if not state.get("sent"):
                if "status" not in state:
                    raise RuntimeError("the WSGI app did not call start_response")
                state["sent"] = True
                await send({"type": "http.response.start", "status": state["status"],
                            "headers": state["headers"]})
            if kind == "body":
                await send({"type": "http.response.body", "body": value, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
