"""Web endpoints end to end (issue 16): fastapi_endpoint, asgi_app, wsgi_app on the
gateway's web port, streaming both ways, scale from zero, @concurrent limits, a client
disconnect cancelling the request, bad input. One cluster and one app for the module."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

#: Small enough that a test crosses it cheaply.
BODY_LIMIT = 1 << 20
#: The wildcard domain of the host forms (requests name it in their Host header).
DOMAIN = "web.test"
#: Seconds before a request with no response yet gets Modal's 303 (150 in production).
REQUEST_TIMEOUT = 8
#: Seconds a client (``burst serve``) may miss heartbeats before its run is stopped.
CLIENT_TIMEOUT = 5.0
#: Seconds a container may take to start (the agent's) and a request is held for one
#: (the gateway's), short enough that a web_server's longer startup_timeout crosses them.
STARTUP_TIMEOUT = 20

APP = '''
import asyncio, os
import burst

app = burst.App("webapp")


@app.function()
@burst.fastapi_endpoint()
def square(x: int) -> dict:
    return {"square": x * x}


@app.function()
@burst.web_endpoint(method="POST", label="echo-post")
def echo(item: dict) -> dict:
    return {"got": item}


@app.function()
@burst.fastapi_endpoint()
def cold(x: int = 1) -> dict:
    return {"cold": x}


_running = 0
_peak = 0


@app.function(max_containers=5)
@burst.concurrent(max_inputs=10)
@burst.fastapi_endpoint()
async def busy(i: int) -> dict:
    global _running, _peak
    _running += 1
    _peak = max(_peak, _running)
    try:  # held until the test lets them all go
        await burst.Queue.from_name("web-crowd", create_if_missing=True).get.aio(timeout=120)
    finally:
        _running -= 1
    return {"i": i, "peak": _peak, "container": os.environ["BURST_CONTAINER_ID"]}


@app.function()
@burst.fastapi_endpoint()
async def slow(tag: str) -> dict:
    q = burst.Queue.from_name("web-slow", create_if_missing=True)
    await q.get.aio(timeout=120)  # until the test releases it
    return {"tag": tag}


@app.function(scaledown_window=1)
@burst.fastapi_endpoint()
async def held() -> dict:
    q = burst.Queue.from_name("web-release", create_if_missing=True)
    await q.get.aio(timeout=120)  # until the test releases it
    return {"released": True}


@app.function(retries=3)
@burst.fastapi_endpoint()
async def flaky() -> dict:
    d = burst.Dict.from_name("web-flaky", create_if_missing=True)
    await d.put.aio("runs", await d.get.aio("runs", 0) + 1)
    raise RuntimeError("flaky failed")


@app.function()
@burst.asgi_app(label="private", requires_proxy_auth=True)
def private():
    from fastapi import FastAPI, Request

    web = FastAPI()

    @web.get("/")
    def seen(request: Request) -> list:
        return sorted(request.headers.keys())

    return web


@app.cls()
class Greeter:
    @burst.enter()
    def load(self):
        self.greeting = "hello"

    @burst.fastapi_endpoint(docs=True)
    def greet(self, name: str) -> dict:
        return {"text": f"{self.greeting} {name}"}


@app.cls()
class Late:
    @burst.enter()
    def load(self):
        import time
        time.sleep(8)  # a slow start: requests are held meanwhile

    @burst.asgi_app(label="late")
    def web(self):
        from fastapi import FastAPI

        web = FastAPI()

        @web.get("/{what}")
        def what(what: str) -> str:
            return what

        return web


@app.function()
@burst.asgi_app(label="api")
def api():
    from fastapi import FastAPI, Request, Response, WebSocket
    from fastapi.responses import StreamingResponse

    web = FastAPI()

    @web.get("/hello")
    def hello(name: str = "world") -> dict:
        return {"hello": name}

    @web.get("/items/{item_id}")
    def item(item_id: int) -> dict:
        return {"item": item_id}

    @web.post("/raw")
    async def raw(request: Request) -> Response:
        body = await request.body()
        seen = request.headers.getlist("x-repeat")
        resp = Response(content=body[::-1], media_type="application/octet-stream")
        resp.headers.append("x-multi", "one")
        resp.headers.append("x-multi", "two")
        resp.headers["x-seen"] = ",".join(seen)
        resp.headers["x-cookie"] = request.cookies.get("c", "")
        resp.set_cookie("a", "1")
        resp.set_cookie("b", "2")
        return resp

    @web.get("/big")
    def big(n: int) -> Response:
        return Response(content=bytes(range(256)) * (n // 256), media_type="application/x-bin")

    @web.post("/size")
    async def size(request: Request) -> dict:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"bytes": n}

    @web.get("/stream")
    async def stream():
        q = burst.Queue.from_name("web-stream", create_if_missing=True)

        async def gen():
            yield "first\\n"
            await q.get.aio(timeout=90)  # the test says when the last chunk may come
            yield "last\\n"
        return StreamingResponse(gen(), media_type="text/plain")

    @web.get("/hang")
    async def hang():
        d = burst.Dict.from_name("web-cancel", create_if_missing=True)
        await d.put.aio("started", True)
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            await d.put.aio("cancelled", True)
            raise
        return {"done": True}

    @web.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message.get("text") == "bye":
                await websocket.close(code=4000, reason="see you")
                return
            if message.get("text") is not None:
                await websocket.send_text("echo " + message["text"])
            else:
                await websocket.send_bytes(message["bytes"][::-1])

    @web.get("/boom")
    def boom():
        raise ValueError("kaboom-secret")

    return web


@app.function()
@burst.web_server(8765, startup_timeout=30)
def files():
    import http.server, threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/chunked"):  # a body in chunks, no length
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"one-", b"two-", b"three"):
                    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
                self.wfile.write(b"0\\r\\n\\r\\n")
                return
            body = (f"{self.path} prefix={self.headers['x-forwarded-prefix']}").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.upper())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 8765), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


@app.function()
@burst.web_server(8766, startup_timeout=60)
def slowstart():  # listens only after the cluster's own startup timeouts (a model loading)
    import http.server, threading, time

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"up")

    def later():
        time.sleep(STARTUP_TIMEOUT + 3)
        http.server.ThreadingHTTPServer(("127.0.0.1", 8766), Handler).serve_forever()

    threading.Thread(target=later, daemon=True).start()


@app.function()
@burst.wsgi_app()
def flaskapp():
    from flask import Flask, request

    f = Flask(__name__)

    @f.route("/hi")
    def hi():
        return {"hi": request.args.get("who", "?"), "script_root": request.script_root}

    @f.route("/echo", methods=["POST"])
    def echo():
        data, one = request.get_data(), request.headers.get("x-one", "")

        def gen():  # a streamed WSGI body
            yield data[::-1]
            yield b"|" + one.encode()
        return f.response_class(gen(), status=202, headers={"x-wsgi": "yes"})

    return f
'''.replace("STARTUP_TIMEOUT", str(STARTUP_TIMEOUT))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, BURST_WEB_MAX_BODY_BYTES=str(BODY_LIMIT),
                               BURST_WEB_KEEPALIVE="0.5", BURST_WEB_AGENT_TIMEOUT="5",
                               BURST_WEB_DOMAIN=DOMAIN,
                               BURST_WEB_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT),
                               BURST_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT),
                               BURST_CLIENT_HEARTBEAT_INTERVAL="0.5",
                               BURST_CLIENT_REAP_INTERVAL="0.25",
                               BURST_STARTUP_TIMEOUT=str(STARTUP_TIMEOUT),
                               BURST_WEB_STARTUP_TIMEOUT=str(STARTUP_TIMEOUT))


@pytest.fixture(scope="module")
def web(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The app deployed; returns the base URL of its endpoints."""
    path = write_app(tmp_path_factory.mktemp("webapp"), APP, "web_app_under_test.py")
    done = cluster.burst("deploy", str(path), check=True)
    out = done.stdout + done.stderr
    state = json.loads((cluster.home / "cluster.json").read_text())
    port = next(p for p in state["parts"] if p["name"] == "gateway")["ports"]["web"]
    # burst deploy prints each endpoint's URL: Modal's host forms, with the domain set.
    assert f"http://default--webapp-square.{DOMAIN}:{port}" in out
    assert f"http://default--echo-post.{DOMAIN}:{port}" in out
    assert f"http://default--webapp-greeter-greet.{DOMAIN}:{port}" in out
    base = f"http://127.0.0.1:{port}/default/webapp"  # the path form always works
    SLOW_START.start(f"{base}/slowstart")  # its long wait overlaps the tests before its own
    return base


class _Background:
    """One request made in a thread of its own from the module's start: the time it
    took and its response (or the exception it raised)."""

    def __init__(self) -> None:
        import threading

        self.done = threading.Event()
        self.took = 0.0
        self.result: httpx.Response | BaseException | None = None

    def start(self, url: str) -> None:
        import threading

        def run() -> None:
            t = time.monotonic()
            try:
                self.result = get(url)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.result = e
            self.took = time.monotonic() - t
            self.done.set()

        threading.Thread(target=run, daemon=True).start()


SLOW_START = _Background()


@pytest.fixture
def sdk(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK in this process talks to the module's cluster."""
    from burst import objects

    monkeypatch.setenv("BURST_URL", cluster.profile["url"])
    monkeypatch.setenv("BURST_TOKEN", cluster.profile["token"])
    objects._clients.clear()
    yield
    objects._clients.clear()


def get(url: str, **kw: Any) -> httpx.Response:
    """GET, following a 303 (a request slower than REQUEST_TIMEOUT on a loaded machine)."""
    return httpx.get(url, timeout=120, follow_redirects=True, **kw)


def containers_of(cluster: Cluster, fn: str, app: str = "webapp") -> dict[str, int]:
    """The function's containers by state."""
    status = json.loads(cluster.burst("app", "status", app, "--json", check=True).stdout)
    return dict(next(f for f in status["functions"] if f["function"] == fn)["containers"])


def part_pid(cluster: Cluster, name: str) -> int:
    state = json.loads((cluster.home / "cluster.json").read_text())
    return int(next(p for p in state["parts"] if p["name"] == name)["pid"])


def test_request_at_scale_zero_is_held_and_answered(cluster: Cluster, web: str) -> None:
    assert containers_of(cluster, "cold") == {}
    r = get(f"{web}/cold?x=5")
    assert r.status_code == 200, r.text
    assert r.json() == {"cold": 5}
    assert sum(containers_of(cluster, "cold").values()) == 1


def test_fastapi_endpoint_typed_get_and_post(web: str) -> None:
    r = get(f"{web}/square", params={"x": 7})
    assert r.status_code == 200 and r.json() == {"square": 49}
    bad = get(f"{web}/square", params={"x": "seven"})  # FastAPI's own validation error
    assert bad.status_code == 422 and "x" in bad.text
    r = httpx.post(f"{web}/echo-post", json={"a": [1, 2]}, timeout=120)
    assert r.status_code == 200 and r.json() == {"got": {"a": [1, 2]}}
    malformed = httpx.post(f"{web}/echo-post", content=b"{not json",
                           headers={"content-type": "application/json"}, timeout=120)
    assert malformed.status_code == 422
    wrong = httpx.post(f"{web}/square", params={"x": 1}, timeout=120)
    assert wrong.status_code == 405  # the app's answer to a wrong method


def test_class_endpoint_runs_after_enter_and_serves_docs(web: str) -> None:
    r = get(f"{web}/greeter-greet", params={"name": "ada"})
    assert r.status_code == 200 and r.json() == {"text": "hello ada"}
    docs = get(f"{web}/greeter-greet/docs")
    assert docs.status_code == 200
    assert "/default/webapp/greeter-greet/openapi.json" in docs.text
    assert get(f"{web}/greeter-greet/openapi.json").status_code == 200


def test_asgi_app_routes_docs_and_unchanged_headers_cookies_body(web: str) -> None:
    assert get(f"{web}/api/hello", params={"name": "bob"}).json() == {"hello": "bob"}
    assert get(f"{web}/api/items/3").json() == {"item": 3}
    assert get(f"{web}/api/items/x").status_code == 422
    assert get(f"{web}/api/nowhere").status_code == 404  # the app's own 404
    docs = get(f"{web}/api/docs")
    assert docs.status_code == 200 and "/default/webapp/api/openapi.json" in docs.text
    assert get(f"{web}/api/openapi.json").json()["paths"].keys() >= {"/hello", "/raw"}
    body = bytes(range(256)) * 10
    r = httpx.post(f"{web}/api/raw", content=body, timeout=120,
                   headers=[("x-repeat", "a"), ("x-repeat", "b"), ("cookie", "c=yum")])
    assert r.status_code == 200
    assert r.content == body[::-1]
    assert r.headers.get_list("x-multi") == ["one", "two"]
    assert r.headers["x-seen"] == "a,b"
    assert r.headers["x-cookie"] == "yum"
    assert sorted(c.split(";")[0] for c in r.headers.get_list("set-cookie")) == ["a=1", "b=2"]


def test_a_large_response_arrives_whole(web: str) -> None:
    n = 3 << 20  # above NATS's 1 MiB message limit: it travels in many frames
    r = get(f"{web}/api/big", params={"n": n})
    assert r.status_code == 200 and r.content == bytes(range(256)) * (n // 256)


def test_wsgi_app_flask(web: str) -> None:
    r = get(f"{web}/flaskapp/hi", params={"who": "me"})
    assert r.status_code == 200
    assert r.json() == {"hi": "me", "script_root": "/default/webapp/flaskapp"}
    r = httpx.post(f"{web}/flaskapp/echo", content=b"abc", headers={"x-one": "1"}, timeout=120)
    assert (r.status_code, r.content, r.headers.get("x-wsgi")) == (202, b"cba|1", "yes")
    assert get(f"{web}/flaskapp/nowhere").status_code == 404  # Flask's own


def test_websocket_echo_through_asgi_app(web: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(web.replace("http://", "ws://") + "/api/ws", open_timeout=120) as ws:
        ws.send("hi")
        assert ws.recv(timeout=60) == "echo hi"
        ws.send(b"\x00\x01\x02")
        assert ws.recv(timeout=60) == b"\x02\x01\x00"
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "see you")


def test_web_server_on_a_port_in_the_container(web: str) -> None:
    r = get(f"{web}/files/some/path", params={"q": "1"})
    assert r.status_code == 200
    assert r.text == "/some/path?q=1 prefix=/default/webapp/files"
    assert get(f"{web}/files/chunked").text == "one-two-three"
    r = httpx.post(f"{web}/files/up", content=b"shout", timeout=120)
    assert r.status_code == 201 and r.content == b"SHOUT"


def test_streamed_response_first_chunk_arrives_before_the_last_is_produced(
        web: str, sdk: None) -> None:
    import burst

    q = burst.Queue.from_name("web-stream", create_if_missing=True)
    with httpx.stream("GET", f"{web}/api/stream", timeout=120) as r:
        assert r.status_code == 200
        chunks = r.iter_text()
        first = next(chunks)
        assert first == "first\n"  # before the app was let to produce the last chunk
        q.put("go")
        assert "".join(chunks) == "last\n"


def test_client_disconnect_cancels_the_request_in_the_container(web: str, sdk: None) -> None:
    import burst

    d = burst.Dict.from_name("web-cancel", create_if_missing=True)
    host, port = web.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET /default/webapp/api/hang HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    deadline = time.monotonic() + 90
    while not d.get("started") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.get("started")
    sock.close()
    deadline = time.monotonic() + 90  # its own wait (a loaded machine: the start was slow)
    while not d.get("cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.get("cancelled") is True


def test_a_client_leaving_while_its_request_is_held_runs_nothing(cluster: Cluster,
                                                                 web: str) -> None:
    """A request held while the endpoint's container starts, whose client goes away, is
    dropped: no container ever gets it."""
    host, port = web.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET /default/webapp/late/left HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    deadline = time.monotonic() + 60
    while not containers_of(cluster, "late"):  # its container is starting: it is held
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sock.close()
    r = get(f"{web}/late/stayed")  # held as well, then answered
    assert r.status_code == 200 and r.json() == "stayed"
    from tests.waiting import eventually

    eventually(lambda: '"/default/webapp/late/stayed"' in cluster.log("agent"), 30,
               "the answered request in the agent's log")
    time.sleep(2)  # (the left one, had it been handed on, was offered with it)
    assert '"/default/webapp/late/left"' not in cluster.log("agent")


def test_fifty_concurrent_requests_scale_out_against_max_inputs_ten(
        cluster: Cluster, web: str, sdk: None) -> None:
    import burst

    with ThreadPoolExecutor(50) as pool:
        pending = [pool.submit(get, f"{web}/busy", params={"i": i}) for i in range(50)]
        # All 50 held in the app: it takes 5 containers of 10 (max_containers=5); the
        # scheduler sees the requests waiting at the agent as it sees queued inputs.
        deadline = time.monotonic() + 120
        while containers_of(cluster, "busy").get("busy", 0) < 5:
            assert time.monotonic() < deadline, containers_of(cluster, "busy")
            time.sleep(0.3)
        status = json.loads(cluster.burst("app", "status", "webapp", "--json",
                                          check=True).stdout)
        held = next(f for f in status["functions"] if f["function"] == "busy")
        assert held["web_requests"] == 50  # visible in `burst app status`
        table = cluster.burst("app", "status", "webapp", check=True).stdout
        assert "web requests" in table
        burst.Queue.from_name("web-crowd", create_if_missing=True).put_many(["go"] * 50)
        answers = [p.result(timeout=120) for p in pending]
    assert [a.status_code for a in answers] == [200] * 50
    results = [a.json() for a in answers]
    assert sorted(r["i"] for r in results) == list(range(50))
    assert len({r["container"] for r in results}) == 5
    # No container ever ran more requests at once than @concurrent allows.
    assert max(r["peak"] for r in results) <= 10


def test_request_body_over_the_limit_is_refused_with_413(web: str) -> None:
    big = b"x" * (BODY_LIMIT + 1)
    r = httpx.post(f"{web}/api/size", content=big, timeout=120)
    assert r.status_code == 413 and r.json()["error"]["type"] == "PayloadTooLarge"

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it streams in
        for _ in range(4):
            yield b"y" * (BODY_LIMIT // 2)

    r = httpx.post(f"{web}/api/size", content=chunked(), timeout=120)
    assert r.status_code == 413
    small = httpx.post(f"{web}/api/size", content=chunked_small(), timeout=120)
    assert small.status_code == 200 and small.json() == {"bytes": 3 * 1000}
    body = bytes(range(256)) * 3000  # 768,000 bytes: several messages to the agent
    r = httpx.post(f"{web}/api/raw", content=body, timeout=120)
    assert r.status_code == 200 and r.content == body[::-1]


def chunked_small() -> Iterator[bytes]:
    for _ in range(3):
        yield b"z" * 1000


def test_app_exception_is_the_apps_500_with_the_traceback_in_logs_only(
        cluster: Cluster, web: str) -> None:
    headers = {"authorization": f"Bearer {cluster.profile['token']}"}
    with httpx.stream("GET", f"{cluster.profile['url']}/v1/apps/webapp/logs", headers=headers,
                      timeout=60) as logs:
        lines = logs.iter_lines()
        assert json.loads(next(lines))["type"] == "subscribed"
        r = get(f"{web}/api/boom")
        assert r.status_code == 500
        assert "kaboom-secret" not in r.text and "Traceback" not in r.text
        seen = []
        for line in lines:
            entry = json.loads(line)
            if entry["type"] == "log":
                seen.append(entry["line"])
                if any("kaboom-secret" in ln for ln in seen) and any(
                        ln.startswith("GET /default/webapp/api/boom") for ln in seen):
                    break
    assert any("Traceback" in ln for ln in seen), seen
    # The request itself is in the app's logs with its status and duration.
    request = next(ln for ln in seen if ln.startswith("GET /default/webapp/api/boom"))
    assert re.fullmatch(r"GET /default/webapp/api/boom -> 500 \(\d+\.\d ms\)", request), request


def test_retries_never_apply_to_requests(web: str, sdk: None) -> None:
    import burst

    r = get(f"{web}/flaky")
    assert r.status_code == 500 and "flaky failed" not in r.text
    time.sleep(3)  # (a first retry, were there one, would have run: its delay is 1 s)
    assert burst.Dict.from_name("web-flaky", create_if_missing=True).get("runs") == 1


def test_unknown_urls_are_404(web: str) -> None:
    root = web.rsplit("/", 2)[0]
    for url in (f"{web}/nothere", f"{root}/default/no-such-app/x", f"{root}/", f"{root}/a"):
        r = get(url)
        assert r.status_code == 404, url
        assert r.json()["error"]["type"] == "NotFound"


def test_get_web_url_answers(cluster: Cluster, web: str) -> None:
    code = ("import burst\n"
            "print(burst.Function.from_name('webapp', 'square').get_web_url())\n"
            "print(burst.Function.from_name('webapp', 'echo').get_web_url())\n")
    out = subprocess.run([sys.executable, "-c", code], env=cluster.env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    square_url, echo_url = out.stdout.split()
    port = web.split(":")[2].split("/")[0]
    assert square_url == f"http://default--webapp-square.{DOMAIN}:{port}"
    assert echo_url == f"http://default--echo-post.{DOMAIN}:{port}"
    # The host form, by its Host header (no DNS for the test domain here).
    host = square_url.split("//")[1]
    r = get(f"http://127.0.0.1:{port}/", params={"x": 3}, headers={"host": host})
    assert r.json() == {"square": 9}
    shouted = host.split(":")[0].upper() + "."  # DNS names: any case, the root's dot
    r = get(f"http://127.0.0.1:{port}/", params={"x": 4}, headers={"host": shouted})
    assert r.json() == {"square": 16}
    r = get(f"http://127.0.0.1:{port}/hello", params={"name": "h"},
            headers={"host": f"default--api.{DOMAIN}"})  # a label: {workspace}--{label}
    assert r.json() == {"hello": "h"}
    docs = get(f"http://127.0.0.1:{port}/docs", headers={"host": f"default--api.{DOMAIN}"})
    assert '"/openapi.json"' in docs.text or "'/openapi.json'" in docs.text  # no prefix
    nothing = get(f"http://127.0.0.1:{port}/", headers={"host": f"default--nope.{DOMAIN}"})
    assert nothing.status_code == 404


def test_proxy_auth_refuses_without_a_token_and_starts_nothing(cluster: Cluster,
                                                                web: str) -> None:
    url = f"{web}/private"
    assert get(url).status_code == 401
    assert get(url, headers={"burst-key": "wk-nope", "burst-secret": "ws-nope"}).status_code == 401
    cluster.burst("workspace", "create", "elsewhere", check=True)
    other = cluster.burst("token", "create", "--proxy-auth", "--workspace", "elsewhere",
                          check=True).stdout.split()
    r = get(url, headers={"burst-key": other[1], "burst-secret": other[3]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthenticated"
    assert containers_of(cluster, "private") == {}  # refused requests started nothing
    out = cluster.burst("token", "create", "--proxy-auth", "--workspace", "default",
                        check=True).stdout.split()
    assert out[0] == "Burst-Key:" and out[2] == "Burst-Secret:"
    key, secret = out[1], out[3]
    assert get(url, headers={"burst-key": key, "burst-secret": secret + "x"}).status_code == 401
    r = get(url, headers={"burst-key": key, "burst-secret": secret, "x-other": "1"})
    assert r.status_code == 200
    assert "x-other" in r.json() and "burst-secret" not in r.json()  # not passed to the app
    r = get(url, headers={"modal-key": key, "modal-secret": secret})  # Modal's header names
    assert r.status_code == 200
    # A proxy-auth token is no API token.
    api = httpx.get(f"{cluster.profile['url']}/v1/apps", timeout=30,
                    headers={"authorization": f"Bearer {key}"})
    assert api.status_code == 401


@pytest.fixture
def second_gateway(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """Another gateway of the cluster (as a second machine behind a load balancer would
    run it); its web port's base URL."""
    from tests.servers import free_port

    state = json.loads((cluster.home / "cluster.json").read_text())
    client = {p["name"]: p["ports"].get("client", 0) for p in state["parts"]}
    port, web_port = free_port(), free_port()
    env = {**cluster.env, "BURST_HOST": "127.0.0.1", "BURST_PORT": str(port),
           "BURST_WEB_PORT": str(web_port), "PYTHONUNBUFFERED": "1",
           "BURST_NATS_URL": f"nats://127.0.0.1:{client['nats']}",
           "BURST_REDIS_URL": f"redis://127.0.0.1:{client['redis']}/0"}
    with open(tmp_path / "gateway2.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "burst_gateway"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "gateway2.log").read_text()[-3000:]
            time.sleep(0.2)
        yield f"http://127.0.0.1:{web_port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_request_past_the_limit_gets_a_303_that_any_gateway_answers(
        web: str, second_gateway: str, sdk: None) -> None:
    """Two slow requests get Modal's 303 after REQUEST_TIMEOUT; one location is followed
    at the gateway holding its result, the other at a second gateway (behind a load
    balancer a client may reach either), which fetches it. A response that started
    streaming meanwhile is never redirected."""
    import burst

    root = web.rsplit("/", 2)[0]
    with httpx.stream("GET", f"{web}/api/stream", timeout=120) as streamed:
        assert streamed.status_code == 200
        chunks = streamed.iter_text()
        assert next(chunks) == "first\n"
        t = time.monotonic()
        with ThreadPoolExecutor(2) as pool:  # not following
            slow = list(pool.map(lambda tag: httpx.get(f"{web}/slow", params={"tag": tag},
                                                       timeout=120), "ab"))
        assert [r.status_code for r in slow] == [303, 303], [r.text for r in slow]
        assert time.monotonic() - t >= REQUEST_TIMEOUT - 0.5
        # The stream, open all this while, goes on to its end.
        burst.Queue.from_name("web-stream", create_if_missing=True).put("go")
        assert "".join(chunks) == "last\n"
    locations = [r.headers["location"] for r in slow]
    for location in locations:  # the capability: the gateway's and the request's ids
        assert location.startswith("/__burst/requests/") and len(location.split("/")) == 5
    # The clients that got the 303s have gone away: that cancels nothing. Following a
    # location waits; it answers once the app does.
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(get, root + locations[0]),
                   pool.submit(get, second_gateway + locations[1])]
        time.sleep(1)  # (both are waiting, the second gateway on the first)
        burst.Queue.from_name("web-slow", create_if_missing=True).put_many(["go", "go"])
        answers = [p.result(timeout=120) for p in pending]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json() for a in answers] == [{"tag": "a"}, {"tag": "b"}]
    assert answers[1].headers["content-type"] == "application/json"
    for base, location in ((root, locations[0]), (second_gateway, locations[1])):
        gone = get(base + location)  # fetched once, wherever
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFound"
    # A location of a gateway that is not there (gone with its results) is 404, saying so.
    lost = get(second_gateway + "/__burst/requests/0123456789abcdef/wr-0")
    assert lost.status_code == 404 and "is gone" in lost.json()["error"]["message"]
    for bad in ("*", ">", "a.b", "%20"):  # never a subject of its own, nor a wildcard
        r = httpx.get(f"{second_gateway}/__burst/requests/{bad}/wr-0", timeout=30)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound", bad


def test_non_asgi_return_is_a_clear_error(cluster: Cluster, web: str, tmp_path: Path) -> None:
    path = write_app(tmp_path, '''
        import burst

        app = burst.App("webbad")

        @app.function()
        @burst.asgi_app()
        def notasgi():
            return 42
    ''', "web_bad_app.py")
    cluster.burst("deploy", str(path), check=True)
    r = get(web.replace("/webapp", "/webbad/notasgi"))
    assert r.status_code == 503
    assert "not an ASGI app" in r.json()["error"]["message"]


def test_scale_down_waits_for_a_request_in_flight(cluster: Cluster, web: str,
                                                  sdk: None) -> None:
    import burst

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(get, f"{web}/held")
        deadline = time.monotonic() + 90
        while containers_of(cluster, "held").get("busy") != 1:
            assert time.monotonic() < deadline, containers_of(cluster, "held")
            time.sleep(0.3)
        # Well past its scaledown_window (1 s) and several scale-down ticks: a container
        # serving a request is busy, never stopped as idle.
        time.sleep(4)
        assert containers_of(cluster, "held") == {"busy": 1}
        assert not pending.done()
        burst.Queue.from_name("web-release", create_if_missing=True).put("go")
        r = pending.result(timeout=60)
    assert r.status_code == 200 and r.json() == {"released": True}


def test_spent_hard_budget_answers_402_before_a_container_starts(
        cluster: Cluster, web: str, tmp_path: Path) -> None:
    path = write_app(tmp_path, '''
        import burst

        app = burst.App("webcapped")

        @app.function(scaledown_window=600, cpu=1.0)
        @burst.fastapi_endpoint()
        def hi() -> str:
            return "hi"
    ''', "web_capped_app.py")
    cluster.burst("deploy", str(path), check=True)
    url = web.replace("/webapp", "/webcapped/hi")
    assert get(url).json() == "hi"  # a container runs, and costs
    cluster.burst("budget", "set", "webcapped", "--limit", "0.000001", "--hard", check=True)
    deadline = time.monotonic() + 60
    while (r := get(url)).status_code != 402:
        assert time.monotonic() < deadline, f"never refused: {r.status_code} {r.text}"
        time.sleep(0.3)
    assert r.json()["error"]["type"] == "BudgetExceeded"
    while containers_of(cluster, "hi", "webcapped"):  # stopped by the hard cap
        assert time.monotonic() < deadline, containers_of(cluster, "hi", "webcapped")
        time.sleep(0.3)
    r = get(url)
    assert r.status_code == 402
    assert containers_of(cluster, "hi", "webcapped") == {}  # refused before any start
    cluster.burst("budget", "clear", "webcapped", check=True)


SERVED = '''
import asyncio
import burst

app = burst.App("served")


@app.function()
@burst.fastapi_endpoint()
async def version(wait: bool = False) -> str:
    if wait:  # in flight across the redeploy: it finishes on the old code
        q = burst.Queue.from_name("web-serve", create_if_missing=True)
        await q.get.aio(timeout=120)
    return "VERSION"
'''


class Serve:
    """A ``burst serve`` process whose stderr lines are read as they come."""

    def __init__(self, cluster: Cluster, src: Path) -> None:
        import queue
        import threading

        self.p = subprocess.Popen([str(Path(sys.executable).parent / "burst"), "serve",
                                   str(src)], env=cluster.env, stderr=subprocess.PIPE,
                                  text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 120.0) -> str:
        """The first line (from now on) containing ``text``."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line with {text!r} within {timeout} s; seen: {self.seen}"
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                assert self.p.poll() is None or not self.lines.empty(), \
                    f"burst serve exited ({self.p.returncode}); seen: {self.seen}"
                continue
            self.seen.append(line)
            if text in line:
                return line

    def url(self, endpoint: str) -> str:
        return self.expect(f"web endpoint {endpoint}:").split(": ", 1)[1].strip()


def app_entry(cluster: Cluster, app: str) -> dict[str, Any] | None:
    listed = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)["apps"]
    return next((a for a in listed if a["app"] == app), None)


def test_burst_serve_runs_ephemerally_picks_up_edits_at_one_url_and_ctrl_c_removes_it(
        cluster: Cluster, web: str, tmp_path: Path, sdk: None) -> None:
    import signal

    import burst

    src = tmp_path / "served_app.py"
    src.write_text(SERVED.replace("VERSION", "v1"))
    serve = Serve(cluster, src)
    try:
        url = serve.url("version")
        host = url.split("//")[1]
        root = web.rsplit("/", 2)[0]
        path_form = f"{root}/default/served-dev/version"

        def ask(**params: Any) -> httpx.Response:
            return get(path_form, params=params)

        assert ask().json() == "v1"
        assert host.startswith("default--served-dev-version.")
        # An ephemeral run of app "served" (its budgets cover it) kept by serve's client.
        entry = app_entry(cluster, "served-dev")
        assert entry is not None
        assert (entry["name"], entry["ephemeral"], entry["detached"]) == ("served", True, False)
        assert entry["client_id"].startswith("cl-")
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(ask, wait=True)
            time.sleep(1)  # (it reaches the v1 container; if not, it still answers v1/v2)
            src.write_text(SERVED.replace("VERSION", "v2"))
            saved = time.monotonic()
            assert serve.url("version") == url  # the same URL after the redeploy
            while (answer := ask().json()) != "v2":
                assert answer == "v1"
                assert time.monotonic() - saved < 60, "the edit never reached the endpoint"
                time.sleep(0.2)
            print(f"new code answered {time.monotonic() - saved:.2f} s after the save")
            burst.Queue.from_name("web-serve", create_if_missing=True).put("go")
            assert in_flight.result(timeout=60).json() == "v1"  # finished on the old code
        src.write_text("this is not python(\n")
        serve.expect("not deployed")
        serve.expect("SyntaxError")
        assert ask().json() == "v2"  # the last good version keeps serving
        src.write_text(SERVED.replace("VERSION", "v3"))  # a fixed save is picked up
        assert serve.url("version") == url
        saved = time.monotonic()
        while (answer := ask().json()) != "v3":
            assert answer == "v2"
            assert time.monotonic() - saved < 60, "the fixed save never reached the endpoint"
            time.sleep(0.2)
        assert app_entry(cluster, "served-dev") is not None  # redeployed in place: one run
    finally:
        serve.p.send_signal(signal.SIGINT)
        serve.p.wait(60)
    assert app_entry(cluster, "served-dev") is None


def test_a_killed_burst_serve_leaves_nothing_running_after_the_heartbeat_deadline(
        cluster: Cluster, web: str, tmp_path: Path) -> None:
    import signal

    from tests.e2e.test_budgets import containers_of as containers_under
    from tests.waiting import eventually

    src = tmp_path / "killed_app.py"
    src.write_text(SERVED.replace('"served"', '"servedk"').replace("VERSION", "k1"))
    serve = Serve(cluster, src)
    try:
        url = serve.url("version")
        assert url.split("//")[1].startswith("default--servedk-dev-version.")
        root = web.rsplit("/", 2)[0]
        assert get(f"{root}/default/servedk-dev/version").json() == "k1"
        assert containers_under(cluster, "default.servedk-dev.")  # a container serves it
        # A second `burst serve` of the app is refused while this one heartbeats.
        second = subprocess.run([str(Path(sys.executable).parent / "burst"), "serve",
                                 str(src)], env=cluster.env, capture_output=True, text=True,
                                timeout=90)
        assert second.returncode == 1
        assert "app 'servedk' is already served as 'servedk-dev'" in second.stderr
    finally:
        serve.p.kill()  # SIGKILL: no Ctrl-C clean-up; only the heartbeats stop
        killed = time.monotonic()
        serve.p.wait(30)
    eventually(lambda: app_entry(cluster, "servedk-dev") is None, CLIENT_TIMEOUT + 60,
               "the killed serve's run removed")
    took = time.monotonic() - killed
    print(f"run removed {took:.2f} s after burst serve was killed "
          f"(deadline {CLIENT_TIMEOUT} s)")
    assert took >= CLIENT_TIMEOUT - 1.0  # not before the deadline (less a beat's interval)
    eventually(lambda: not containers_under(cluster, "default.servedk-dev."), 60,
               "the killed serve's containers stopped")
    r = get(f"{root}/default/servedk-dev/version")
    assert r.status_code == 404
    again = Serve(cluster, src)  # the killed one's run reaped: serving the app works again
    try:
        assert again.url("version") == url
        assert get(f"{root}/default/servedk-dev/version").json() == "k1"
    finally:
        again.p.send_signal(signal.SIGINT)
        again.p.wait(60)
    assert app_entry(cluster, "servedk-dev") is None


def test_burst_serve_refuses_to_replace_a_deployed_app_of_its_dev_id(
        cluster: Cluster, web: str, tmp_path: Path) -> None:
    deployed = write_app(tmp_path, SERVED.replace('"served"', '"clash-dev"')
                         .replace("VERSION", "deployed"), "clash_deployed.py")
    cluster.burst("deploy", str(deployed), check=True)
    src = tmp_path / "clash_app.py"
    src.write_text(SERVED.replace('"served"', '"clash"').replace("VERSION", "served"))
    done = subprocess.run([str(Path(sys.executable).parent / "burst"), "serve", str(src)],
                          env=cluster.env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert "app 'clash-dev' is deployed in workspace 'default'" in done.stderr
    root = web.rsplit("/", 2)[0]
    assert get(f"{root}/default/clash-dev/version").json() == "deployed"  # untouched
    entry = app_entry(cluster, "clash-dev")
    assert entry is not None and not entry["ephemeral"]
    cluster.burst("app", "stop", "clash-dev", check=True)


TWIN = '''
import os
import burst

app = burst.App("twin")


@app.function(scaledown_window=600)
@burst.fastapi_endpoint()
def where() -> str:
    return os.environ["BURST_CONTAINER_ID"]


@app.local_entrypoint()
def main() -> None:
    print("RUN", app.app_id)
'''


def test_a_run_of_an_app_leaves_its_deployments_web_containers_serving(
        cluster: Cluster, web: str, tmp_path: Path) -> None:
    """A run has an id of its own: its deploy retires no container of the deployed app."""
    src = write_app(tmp_path, TWIN, "twin_app.py")
    cluster.burst("deploy", str(src), check=True)
    url = f"{web.rsplit('/', 2)[0]}/default/twin/where"
    first = get(url).json()
    run = cluster.burst("run", str(src), check=True)
    assert "RUN ap-" in run.stdout
    time.sleep(1)  # (an agent retiring the deployed app's container would have done so)
    assert get(url).json() == first  # the same warm container answers
    cluster.burst("app", "stop", "twin", check=True)


SPREAD = '''
import os
import burst

app = burst.App("webspread")


@app.function(gpu="T4", max_containers=2, scaledown_window=60)
@burst.concurrent(max_inputs=2)
@burst.fastapi_endpoint()
async def hold(i: int) -> dict:
    cid = os.environ["BURST_CONTAINER_ID"]
    await burst.Dict.from_name("web-spread", create_if_missing=True).put.aio(f"started-{i}", cid)
    await burst.Queue.from_name("web-spread-go", create_if_missing=True).get.aio(timeout=120)
    return {"i": i, "container": cid}
'''


def test_a_request_waiting_for_a_slot_moves_to_a_new_container_on_another_agent(
        cluster: Cluster, web: str, tmp_path: Path, sdk: None) -> None:
    """Two agents of one GPU each (only they can run the function, a container each):
    the request that finds the first agent's container full waits there only until the
    scheduler's second container, on the other agent, is ready; it runs there, not after
    a slot frees on the first."""
    import burst
    from tests.e2e.test_failover import Agents, wait_agents_live
    from tests.waiting import eventually

    agents = Agents(cluster, tmp_path)
    try:
        agents.start("web-gpu-a", "T4:1")
        agents.start("web-gpu-b", "T4:1")
        wait_agents_live(cluster, "web-gpu-a", "web-gpu-b")
        cluster.burst("deploy", str(write_app(tmp_path, SPREAD, "web_spread_app.py")),
                      check=True)
        url = f"{web.rsplit('/', 2)[0]}/default/webspread/hold"
        started = burst.Dict.from_name("web-spread", create_if_missing=True)
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(get, url, params={"i": 0})]
            eventually(lambda: started.get("started-0") is not None, 60, "request 0 started")
            pending += [pool.submit(get, url, params={"i": i}) for i in (1, 2)]
            # Two run in the first container; the third runs in the second container,
            # while the first two still hold theirs.
            eventually(lambda: all(started.get(f"started-{i}") for i in range(3)), 45,
                       "all three requests running at once")
            where = {started.get(f"started-{i}") for i in range(3)}
            assert len(where) == 2, where
            burst.Queue.from_name("web-spread-go", create_if_missing=True).put_many(["go"] * 3)
            answers = [p.result(timeout=60) for p in pending]
        assert [a.status_code for a in answers] == [200] * 3
        assert sorted(a.json()["i"] for a in answers) == [0, 1, 2]
        moved = agents.log("web-gpu-a") + agents.log("web-gpu-b")
        assert "web_request_moved" in moved and "web_request_taken_over" in moved
    finally:
        cluster.burst("app", "stop", "webspread")
        agents.stop_all()


def test_a_web_server_gets_its_own_startup_timeout_on_top_of_the_clusters(web: str) -> None:
    """A server listening only after the agent's startup timeout and the gateway's hold
    (a model loading): its startup_timeout=60 counts, the request is held and answered.
    (The request was made when the module's app was deployed: late in the module, its
    wait is over.)"""
    assert SLOW_START.done.wait(100), "the request to the slow web_server never ended"
    r = SLOW_START.result
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 200, r.text
    assert r.text == "up"
    assert SLOW_START.took >= STARTUP_TIMEOUT  # it did wait past the cluster's own


def test_a_lost_agent_answers_502(cluster: Cluster, web: str, sdk: None) -> None:
    """Last in the module: it kills the agent (the supervisor starts it again)."""
    import os
    import signal

    import burst

    d = burst.Dict.from_name("web-cancel", create_if_missing=True)
    d.pop("started", None)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(get, f"{web}/api/hang")
        deadline = time.monotonic() + 90
        while not d.get("started"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(part_pid(cluster, "agent"), signal.SIGKILL)
        r = pending.result(timeout=90)
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "BadGateway"
