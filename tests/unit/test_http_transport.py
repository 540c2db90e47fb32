"""The SDK's lean HTTP/1.1 transport against a scripted server: one write per request,
Content-Length and chunked bodies, keep-alive reuse, and a connection the server closed."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from burst._http import Connection


class Server:
    """Answers each request on a connection with the next scripted reply; records requests
    (and in how many recv calls each arrived)."""

    def __init__(self, replies: list[bytes], close_after: int | None = None) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            served = 0
            buf = b""
            while self.replies:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if b"\r\n\r\n" not in buf:
                    break
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
                conn.sendall(self.replies.pop(0))
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def make_server() -> Iterator[object]:
    servers: list[Server] = []

    def make(replies: list[bytes], close_after: int | None = None) -> Server:
        s = Server(replies, close_after)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_content_length_body_and_keep_alive(make_server: object) -> None:
    srv = make_server([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",  # type: ignore[operator]
                       b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok"])
    c = Connection("127.0.0.1", srv.port, timeout=5)
    assert c.request("POST", "/v1/x", b"\x01\x02", {"Content-Type": "application/msgpack"}) == (
        200, b"hello")
    assert c.request("GET", "/v1/y?wait=1", None, {}) == (202, b"ok")
    assert srv.connections == 1  # the connection was kept alive
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"Content-Length: 2\r\n" in first and first.endswith(b"\r\n\r\n\x01\x02")
    assert b"Host: 127.0.0.1:" in first
    c.close()


def test_chunked_body_and_204(make_server: object) -> None:
    srv = make_server([  # type: ignore[operator]
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nend"])
    c = Connection("127.0.0.1", srv.port, timeout=5)
    assert c.request("GET", "/a", None, {}) == (200, b"abcdefg")
    assert c.request("DELETE", "/b", None, {}) == (204, b"")
    assert c.request("GET", "/c", None, {}) == (200, b"end")  # stream position intact


def test_connection_close_and_server_gone(make_server: object) -> None:
    srv = make_server([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",  # type: ignore[operator]
                       b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"], close_after=1)
    c = Connection("127.0.0.1", srv.port, timeout=5)
    assert c.request("GET", "/", None, {}) == (200, b"a")
    assert c.request("GET", "/", None, {}) == (200, b"b")  # reconnected by itself
    assert srv.connections == 2


def test_idle_connection_closed_by_the_server_raises_remote_disconnected(
        make_server: object) -> None:
    srv = make_server([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"], close_after=1)  # type: ignore[operator]
    c = Connection("127.0.0.1", srv.port, timeout=5)
    assert c.request("GET", "/", None, {}) == (200, b"a")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        c.request("GET", "/", None, {})


def test_malformed_status_line(make_server: object) -> None:
    srv = make_server([b"SPDY/9 banana\r\n\r\n"])  # type: ignore[operator]
    c = Connection("127.0.0.1", srv.port, timeout=5)
    with pytest.raises(http.client.BadStatusLine, match="SPDY/9 banana"):
        c.request("GET", "/", None, {})


def test_client_retries_once_on_a_connection_closed_while_idle(make_server: object) -> None:
    from burst.client import Client

    srv = make_server([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",  # type: ignore[operator]
                       b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}"], close_after=1)
    c = Client(f"http://127.0.0.1:{srv.port}", "tok")
    assert c.get_json("/v1/x") == {}
    assert c.get_json("/v1/y") == {"a": 1}  # the server had closed the first connection
    assert srv.connections == 2
    assert b"Authorization: Bearer tok\r\n" in srv.requests[1]


def test_client_error_answers_and_unreachable_cluster() -> None:
    from burst.client import Client
    from burst.exception import NotFoundError, UnavailableError

    body = b'{"error": {"type": "NotFound", "message": "app \'x\' is not deployed"}}'
    srv = Server([b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)])
    try:
        with pytest.raises(NotFoundError, match="app 'x' is not deployed"):
            Client(f"http://127.0.0.1:{srv.port}", "tok").get_json("/v1/apps/x")
    finally:
        srv.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(UnavailableError, match=f"cannot reach the Burst cluster at http://127.0.0.1:{port}"):
        Client(f"http://127.0.0.1:{port}", "tok", unavailable_retry=0).get_json("/v1/status")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_client_retries_a_gateway_that_is_restarting() -> None:
    """A gateway answers, goes away (connection refused), comes back answering 503
    Unavailable (its NATS still reconnecting), then answers: the caller sees only the
    answers."""
    import time

    from burst.client import Client

    port = _free_port()
    unavailable = b'{"error": {"type": "Unavailable", "message": "NATS is unreachable"}}'
    replies = [b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: %d"
               b"\r\n\r\n%s" % (len(unavailable), unavailable),
               b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 1}"]
    started: list[Server] = []

    def come_back() -> None:
        time.sleep(0.6)  # refused until then
        srv = Server.__new__(Server)
        srv.replies, srv.close_after, srv.requests, srv.connections = list(replies), None, [], 0
        srv.sock = socket.socket()
        srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.sock.bind(("127.0.0.1", port))
        srv.sock.listen()
        srv.port = port
        threading.Thread(target=srv._serve, daemon=True).start()
        started.append(srv)

    try:
        c = Client(f"http://127.0.0.1:{port}", "tok", unavailable_retry=10)
        c.reached = True  # it answered this client before; now its port refuses
        threading.Thread(target=come_back, daemon=True).start()
        t0 = time.monotonic()
        assert c.post_json("/v1/apps/x/functions/f/calls", {}) == {"a": 1}
        assert time.monotonic() - t0 >= 0.5
        assert len(started[0].requests) == 2  # the 503, then the answer
    finally:
        for srv in started:
            srv.close()


def test_client_fails_at_once_where_no_cluster_ever_answered() -> None:
    import time

    from burst.client import Client
    from burst.exception import UnavailableError

    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match="is it running"):
        Client(f"http://127.0.0.1:{_free_port()}", "tok", unavailable_retry=30).get_json("/")
    assert time.monotonic() - t0 < 2


def test_client_gives_up_after_its_retry_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from burst.client import Client
    from burst.exception import UnavailableError

    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "0.5")
    port = _free_port()
    t0 = time.monotonic()
    c = Client(f"http://127.0.0.1:{port}", "tok")
    c.reached = True  # a gateway answered before: this is a restart that never ends
    with pytest.raises(UnavailableError, match="cannot reach the Burst cluster"):
        c.get_json("/v1/status")
    assert 0.5 <= time.monotonic() - t0 < 5
    monkeypatch.setenv("BURST_UNAVAILABLE_RETRY", "soon")
    with pytest.raises(ValueError, match="BURST_UNAVAILABLE_RETRY='soon'"):
        Client(f"http://127.0.0.1:{port}", "tok")


def test_a_call_submission_cut_mid_answer_is_not_sent_twice() -> None:
    """A POST that reached the gateway and lost its connection may have been accepted:
    sending it again could run the call twice, so it raises (a wait is sent again)."""
    from burst.client import Client
    from burst.exception import UnavailableError

    srv = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"] * 3, close_after=1)
    try:
        c = Client(f"http://127.0.0.1:{srv.port}", "tok", unavailable_retry=5)
        with pytest.raises((UnavailableError,)):
            c.post_json("/v1/apps/x/functions/f/calls", {})
        assert len(srv.requests) <= 2  # the first, and at most the one fresh-connection try
    finally:
        srv.close()
