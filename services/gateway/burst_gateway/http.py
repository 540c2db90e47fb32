"""uvicorn's HTTP protocol with one write per response.

uvicorn writes a response's status line and headers, then its body, as two writes: two
TCP segments, and often two wake-ups for the caller, per call. :class:`OneWrite` gathers
the writes made in one turn of the event loop into one (small ones only: a large body is
not copied), and the gateway runs uvicorn with :class:`GatewayHttp`, which also sends
what is gathered as soon as a response is complete.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from burst.exception import InvalidError
from burst.wire import IDENT_RULE

#: Writes are gathered while they add up to at most this many bytes.
GATHER_MAX = 64 << 10


class OneWrite:
    """An asyncio transport whose small writes within one loop turn go out as one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport
        self._buf: list[bytes] = []
        self._size = 0
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._size + len(data) > GATHER_MAX:
            self.flush()
            self._t.write(data)
            return
        if not self._buf:
            self._loop.call_soon(self.flush)
        self._buf.append(bytes(data))
        self._size += len(data)

    def flush(self) -> None:
        if not self._buf:
            return
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        if not self._t.is_closing():
            self._t.write(data)

    def close(self) -> None:
        self.flush()
        self._t.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


#: The longest request target (path and query) the HTTP parser takes apart
#: (``httptools.parse_url`` keeps offsets in 16 bits).
MAX_URL = 65535


def bad_request_body(url_length: int) -> bytes:
    """The API's JSON error for a request the HTTP parser refused."""
    if url_length > MAX_URL:
        message = (f"the request URL is {url_length} bytes long; at most {MAX_URL} are "
                   f"accepted (app and function names: {IDENT_RULE})")
    else:
        message = "malformed HTTP request: it could not be parsed as HTTP/1.1"
    return json.dumps({"error": {"type": InvalidError.type, "message": message}},
                      separators=(",", ":")).encode()


class GatewayHttp(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a request its parser refuses (a URL too long to parse, say) in
        # plain text; the gateway answers every error as ``{"error": {...}}``.
        body = bad_request_body(len(getattr(self, "url", b"")))
        self.transport.write(b"".join([
            b"HTTP/1.1 400 Bad Request\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWrite(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # The whole response is written: out now, not a loop turn later.
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
