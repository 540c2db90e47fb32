"""One kept-alive HTTP/1.1 connection, lean on purpose: the SDK's hot path.

``http.client`` sends a request's headers and body in separate writes and parses every
response's headers with the ``email`` package; on a warm call that is a large share of the
client's time. Here a request is one ``sendall`` on a socket with ``TCP_NODELAY``, and the
response is read with a small parser that understands what the gateway (uvicorn) sends:
a status line, headers, then a ``Content-Length`` body or a chunked one.

Errors are the standard library's: a connection the server closed while idle raises
:class:`http.client.RemoteDisconnected` (so the caller may retry once on a fresh one), a
malformed answer :class:`http.client.HTTPException`, and socket trouble :class:`OSError`.
"""

from __future__ import annotations

import http.client
import io
import socket

#: Longest status or header line accepted, and most header lines (as http.client).
_MAX_LINE = 65536
_MAX_HEADERS = 100


class Connection:
    def __init__(self, host: str, port: int, timeout: float, tls: bool = False) -> None:
        self.host, self.port, self.timeout, self.tls = host, port, timeout, tls
        self._sock: socket.socket | None = None
        self._rfile: io.BufferedReader | None = None
        default_port = 443 if tls else 80
        self._host_header = host if port == default_port else f"{host}:{port}"

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self._sock = sock
        self._rfile = sock.makefile("rb")

    def close(self) -> None:
        if self._sock is not None:
            try:
                if self._rfile is not None:
                    self._rfile.close()
                self._sock.close()
            finally:
                self._sock = self._rfile = None

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str], timeout: float | None = None) -> tuple[int, bytes]:
        """Send one request and read its whole answer: ``(status, body)``."""
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        self._sock.settimeout(timeout if timeout is not None else self.timeout)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            self._sock.sendall(data + body if body else data)
            status, length, chunked, close = self._read_head()
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                payload = b""
            elif chunked:
                payload = self._read_chunked()
            elif length is not None:
                payload = self._read_exactly(length)
            else:  # no length: the body runs until the server closes
                assert self._rfile is not None
                payload = self._rfile.read()
                close = True
        except BaseException:
            self.close()  # the stream's position is unknown: never reuse it
            raise
        if close:
            self.close()
        return status, payload

    def _line(self) -> bytes:
        assert self._rfile is not None
        line: bytes = self._rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _read_head(self) -> tuple[int, int | None, bool, bool]:
        line = self._line()
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection unanswered")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1", "replace").strip())
        status = int(parts[1])
        length: int | None = None
        chunked = False
        close = parts[0] == b"HTTP/1.0"
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return status, length, chunked, close
            if not line:
                raise http.client.IncompleteRead(b"")
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise http.client.HTTPException(f"bad Content-Length {value!r}") from None
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                close = b"close" in value.lower()
        raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers")

    def _read_exactly(self, n: int) -> bytes:
        assert self._rfile is not None
        data: bytes = self._rfile.read(n)
        if len(data) < n:
            raise http.client.IncompleteRead(data, n - len(data))
        return data

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(f"bad chunk size {size_line!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(out)
            out += self._read_exactly(size)
            self._read_exactly(2)  # the chunk's CRLF
