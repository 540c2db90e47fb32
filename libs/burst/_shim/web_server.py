"""``@burst.web_server(port)`` inside the container: an ASGI app relaying each request to
the server the user's function started on ``127.0.0.1:port`` (the container's own
loopback), over plain HTTP/1.1 with the standard library only (the image needs nothing).

Each request opens one connection (``Connection: close``): the response ends with its
``Content-Length``, its last chunk, or the end of the connection. The request body is
read whole first (the gateway caps it); the response streams as the server writes it.
The server sees the path below the endpoint's URL, the URL's prefix in
``X-Forwarded-Prefix``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from burst._shim.wsgi import read_body

#: Headers of one hop, never relayed.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade"})
_READ = 64 << 10


def wait_listening(port: int, timeout: float) -> None:
    """Return once something accepts connections on ``127.0.0.1:port``; TimeoutError
    naming the port after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"@burst.web_server: nothing listens on port {port} within "
                                   f"{timeout:g} s of the function's start (raise "
                                   "startup_timeout=, or check the server's logs)") from None
            time.sleep(0.05)


class PortProxy:
    def __init__(self, port: int) -> None:
        self.port = port

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:  # the client left before its request was whole
            return
        root = scope.get("root_path", "").encode()
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        target = raw[len(root):] if root and raw.startswith(root) else raw
        target = target or b"/"
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        lines = [scope["method"].encode() + b" " + target + b" HTTP/1.1"]
        lines += [k + b": " + v for k, v in scope["headers"]
                  if k.lower() not in _HOP and k.lower() != b"content-length"]
        lines += [b"content-length: " + str(len(body)).encode(), b"connection: close",
                  b"x-forwarded-prefix: " + root]
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            await writer.drain()
            await self._response(scope["method"], reader, send)
        finally:
            writer.close()

    async def _response(self, method: str, reader: asyncio.StreamReader, send: Any) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: list[tuple[bytes, bytes]] = []
        chunked = False
        length: int | None = None
        for line in header_lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            if name == b"content-length" and value.isdigit():
                length = int(value)
            if name not in _HOP:
                headers.append((name, value))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()).strip():  # trailers
                        pass
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                await send({"type": "http.response.body", "body": data, "more_body": True})
        else:
            left = length
            while left is None or left > 0:
                data = await reader.read(_READ if left is None else min(_READ, left))
                if not data:
                    break
                if left is not None:
                    left -= len(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
