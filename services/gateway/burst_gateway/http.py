"""uvicorn's HTTP protocol with one write per response.

uvicorn writes a response's status line and headers, then its body, as two writes: two
TCP segments, and often two wake-ups for the caller, per call. :class:`OneWrite` gathers
the writes made in one turn of the event loop into one (small ones only: a large body is
not copied), and the gateway runs uvicorn with :class:`GatewayHttp`, which also sends
what is gathered as soon as a response is complete.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class GatewayHttp(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWrite(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # The whole response is written: out now, not a loop turn later.
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
