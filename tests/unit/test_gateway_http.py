"""The gateway's transport wrapper: a response's writes in one loop turn leave as one."""

from __future__ import annotations

import asyncio

from burst_gateway.http import GATHER_MAX, OneWrite


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_in_one_turn_leave_as_one_and_close_flushes_first() -> None:
    t = _Transport()
    w = OneWrite(t)  # type: ignore[arg-type]
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    w.write(b"ok")
    assert t.writes == []
    await asyncio.sleep(0)
    assert t.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    w.write(b"head")
    w.write(b"body")
    w.close()  # a connection closed right after its response still sends it, once
    assert t.writes[1:] == [b"headbody"] and t.closed
    await asyncio.sleep(0)
    assert len(t.writes) == 2
    assert w.get_extra_info("peername") == "info:peername"  # the rest passes through


async def test_a_large_write_is_not_gathered() -> None:
    t = _Transport()
    w = OneWrite(t)  # type: ignore[arg-type]
    big = b"x" * (GATHER_MAX + 1)
    w.write(b"head")
    w.write(big)  # what was gathered goes first, then the large write as it is
    assert t.writes == [b"head", big]
    await asyncio.sleep(0)
    assert t.writes == [b"head", big]


async def test_a_complete_response_leaves_without_waiting_for_the_next_loop_turn() -> None:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from burst_gateway.http import GatewayHttp

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        return None

    config = Config(app=app, http=GatewayHttp)
    config.load()
    proto = GatewayHttp(config=config, server_state=ServerState(), app_state={})
    t = _Transport()
    t.get_extra_info = lambda name, default=None: None  # type: ignore[method-assign,assignment]
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    proto.transport.write(b"ok")
    assert t.writes == []  # gathered...
    proto.on_response_complete()  # ...and sent as the response completes, in one write
    assert t.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    await asyncio.sleep(0)
    assert len(t.writes) == 1
    proto.timeout_keep_alive_task.cancel()  # type: ignore[union-attr]


async def test_a_request_the_parser_refuses_gets_the_apis_json_error() -> None:
    """A URL too long for httptools (a 100,000-character name) is answered as every other
    error, ``{"error": {"type", "message"}}``, not with uvicorn's plain text."""
    import json

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from burst_gateway.http import GatewayHttp

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError("a refused request never reaches the application")

    config = Config(app=app, http=GatewayHttp)
    config.load()
    for path, says in [(b"/v1/apps/" + b"a" * 100_000 + b"/status", b"100016 bytes long"),
                       (b"/v1/apps/x/status", b"malformed HTTP request")]:
        proto = GatewayHttp(config=config, server_state=ServerState(), app_state={})
        t = _Transport()
        t.get_extra_info = lambda name, default=None: None  # type: ignore[method-assign,assignment]
        proto.connection_made(t)  # type: ignore[arg-type]
        bad = b"" if says == b"100016 bytes long" else b"\x00bad"
        proto.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n" + bad + b"\r\n")
        head, _, body = b"".join(t.writes).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and t.closed
        assert b"content-type: application/json" in head
        assert f"content-length: {len(body)}".encode() in head
        err = json.loads(body)["error"]
        assert err["type"] == "InvalidInput" and says.decode() in err["message"], err
        if len(path) > 65535:  # httptools cannot parse it: names are at most 63 characters
            assert "1-63 characters" in err["message"]
        if proto.timeout_keep_alive_task is not None:
            proto.timeout_keep_alive_task.cancel()
