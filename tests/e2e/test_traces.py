"""Traces: a traced call's spans from the SDK, gateway, scheduler, agent and shim, kept in
the cluster (``burst trace``) and exported over OTLP/HTTP to a collector (a tiny HTTP
server here); untraced calls leave none; another workspace never sees them."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app
from tests.e2e.test_workspaces import burst_as

pytestmark = pytest.mark.e2e

COLD_STEPS = {"container.image", "container.sandbox", "container.fork", "shim.import",
              "shim.enter"}


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint: keeps every ``/v1/traces`` request's decoded spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (service, trace id, span name)
        self.paths: list[str] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.paths.append(self.path)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes
                                    if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            collector.spans.append((service, s.trace_id.hex(), s.name))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    t = threading.Thread(target=c.serve_forever, daemon=True)
    t.start()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Cluster]:
    yield from running_cluster(
        tmp_path_factory,
        BURST_TRACE_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}")


@pytest.fixture(scope="module")
def app_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app(tmp_path_factory.mktemp("traced"), """
        import os
        import time

        import burst

        app = burst.App("traced")


        @app.cls(memory=256, max_containers=1)
        class Slow:
            @burst.enter()
            def up(self):
                time.sleep(4)  # the container is still starting when the traced call comes

            @burst.method()
            def ping(self, x):
                return x


        @app.local_entrypoint()
        def behind():
            traced = os.environ.pop("BURST_TRACE")  # (set by --trace; read at each call)
            Slow().ping.spawn(1)  # untraced: it places the one container
            os.environ["BURST_TRACE"] = traced
            time.sleep(0.5)
            print("behind", Slow().ping.remote(2))

        @app.function(memory=256)
        def echo(x):
            return x

        @app.function(memory=256)
        def parent(x):  # calls from inside a (traced) container
            return echo.remote(x) + sum(echo.map([1, 2]))

        @app.local_entrypoint()
        def main():
            print("first", echo.remote(1))   # cold: a container starts for it
            print("second", echo.remote(2))  # warm: the same container

        @app.local_entrypoint()
        def spawned():
            print("spawned", echo.spawn(7).get(timeout=120))

        @app.local_entrypoint()
        def mapped():
            print("mapped", sorted(echo.map(range(5))))

        @app.local_entrypoint()
        def nested():
            print("nested", parent.remote(10))
    """, "traced_app.py")


@pytest.fixture(scope="module")
def web_base(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A deployed web endpoint's app; the base URL of its endpoints (path form)."""
    path = write_app(tmp_path_factory.mktemp("tracedweb"), """
        import burst

        app = burst.App("tracedweb")


        @app.function(memory=256)
        @burst.fastapi_endpoint()
        def hello(x: int = 1) -> dict:
            return {"hello": x}
    """, "traced_web_app.py")
    cluster.burst("deploy", str(path), check=True)
    state = json.loads((cluster.home / "cluster.json").read_text())
    port = next(p for p in state["parts"] if p["name"] == "gateway")["ports"]["web"]
    return f"http://127.0.0.1:{port}/default/tracedweb"


def traced_ids(proc: Any) -> list[str]:
    return re.findall(r"burst trace ((?:fc|wr)-[0-9a-f]{32})", proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def traced_run(cluster: Cluster, app_file: Path) -> list[str]:
    """`burst run --trace`: the call ids it lists, cold first."""
    proc = cluster.burst("run", "--trace", f"{app_file}::main", check=True)
    assert "first 1" in proc.stdout and "second 2" in proc.stdout
    ids = re.findall(r"burst trace (fc-[0-9a-f]{32})", proc.stdout + proc.stderr)
    assert len(ids) == 2, proc.stdout + proc.stderr
    return ids


def api(cluster: Cluster, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, token: str | None = None
        ) -> tuple[int, Any]:
    p = cluster.profile
    req = urllib.request.Request(p["url"] + path, data=body, method=method, headers={
        "Authorization": f"Bearer {token or p['token']}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def spans_when(cluster: Cluster, call_id: str, names: set[str],
               timeout: float = 30.0) -> list[dict[str, Any]]:
    """The call's kept spans once every one of ``names`` is among them (spans are
    stored as each service finishes them)."""
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = api(cluster, "GET", f"/v1/calls/{call_id}/trace")
        if status == 200:
            spans = body["spans"]
            if names <= {s["name"] for s in spans}:
                return spans
        time.sleep(0.2)
    raise AssertionError(f"spans of {call_id}: {[s['name'] for s in spans]}, want {names}")


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {s["name"]: s for s in spans}
    assert len(out) == len(spans), [s["name"] for s in spans]  # each once
    return out


def test_cold_call_trace_spans_every_service_parented(cluster: Cluster,
                                                       traced_run: list[str]) -> None:
    cold = traced_run[0]
    want = {"sdk.call", "gateway.call", "scheduler.placement", "agent.container_start",
            "agent.input", "shim.function", *COLD_STEPS}
    s = by_name(spans_when(cluster, cold, want))
    assert set(s) == want
    assert len({x["trace_id"] for x in s.values()}) == 1
    assert {x["service"] for x in s.values()} == {"sdk", "gateway", "scheduler", "agent"}
    parent = {name: x["parent_id"] for name, x in s.items()}
    assert parent["sdk.call"] == ""
    assert parent["gateway.call"] == s["sdk.call"]["span_id"]
    assert parent["scheduler.placement"] == s["gateway.call"]["span_id"]
    assert parent["agent.container_start"] == s["scheduler.placement"]["span_id"]
    for step in COLD_STEPS:
        assert parent[step] == s["agent.container_start"]["span_id"], step
    assert parent["agent.input"] == s["gateway.call"]["span_id"]
    assert parent["shim.function"] == s["agent.input"]["span_id"]
    # Timings nest: the call holds the placement wait, the start and the first input.
    sdk = s["sdk.call"]
    for x in s.values():
        assert x["start"] <= x["end"], x
    for name in ("gateway.call", "agent.input", "shim.function"):
        assert sdk["start"] - 0.5 <= s[name]["start"] <= s[name]["end"] <= sdk["end"] + 0.5
    assert s["agent.container_start"]["end"] <= s["agent.input"]["end"]
    assert all(x["call_id"] == cold for x in s.values())

    # The CLI prints the tree with timings.
    out = cluster.burst("trace", cold, check=True).stdout
    for name in want:
        assert name in out
    assert re.search(r"shim\.function \(agent\)\s+[0-9.]+ ms", out), out


def test_warm_call_trace_has_no_scheduler(cluster: Cluster, traced_run: list[str]) -> None:
    warm = traced_run[1]
    want = {"sdk.call", "gateway.call", "agent.input", "shim.function"}
    spans = spans_when(cluster, warm, want)
    time.sleep(1.0)  # anything else would have come by now
    s = by_name(spans_when(cluster, warm, want))
    assert set(s) == want
    assert s["gateway.call"]["parent_id"] == s["sdk.call"]["span_id"]
    assert s["agent.input"]["parent_id"] == s["gateway.call"]["span_id"]
    assert s["shim.function"]["parent_id"] == s["agent.input"]["span_id"]
    assert len(spans) == len(want)


def test_spans_exported_over_otlp_http(cluster: Cluster, traced_run: list[str],
                                       collector: Collector) -> None:
    trace_id = spans_when(cluster, traced_run[0], {"sdk.call"})[0]["trace_id"]
    want = {("burst-sdk", "sdk.call"), ("burst-gateway", "gateway.call"),
            ("burst-scheduler", "scheduler.placement"), ("burst-agent", "agent.input"),
            ("burst-agent", "shim.function"), ("burst-agent", "shim.enter")}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = {(svc, name) for svc, tid, name in list(collector.spans) if tid == trace_id}
        if want <= got:
            break
        time.sleep(0.2)
    assert want <= got, got
    assert set(collector.paths) == {"/v1/traces"}


def test_http_header_traces_one_call_and_untraced_calls_leave_none(
        cluster: Cluster, app_file: Path) -> None:
    cluster.burst("deploy", str(app_file), check=True)
    body = json.dumps({"args": [5]}).encode()
    path = "/v1/apps/traced/functions/echo/calls?wait=60"
    json_ct = {"Content-Type": "application/json"}
    status, traced = api(cluster, "POST", path, body, {**json_ct, "X-Burst-Trace": "1"})
    assert status == 200 and traced["result"] == 5
    s = by_name(spans_when(cluster, traced["call_id"], {"gateway.call", "agent.input",
                                                        "shim.function"}))
    assert s["gateway.call"]["parent_id"] == ""  # the trace starts at the gateway

    status, plain = api(cluster, "POST", path, body, json_ct)
    assert status == 200 and plain["result"] == 5
    time.sleep(2.0)  # as long as the traced call's spans took, and more
    status, err = api(cluster, "GET", f"/v1/calls/{plain['call_id']}/trace")
    assert status == 404, err
    assert "no trace of call" in err["error"]["message"]

    status, err = api(cluster, "POST", path, body, {**json_ct, "X-Burst-Trace": "maybe"})
    assert status == 400 and "X-Burst-Trace" in err["error"]["message"]


def test_other_workspace_gets_404(cluster: Cluster, traced_run: list[str]) -> None:
    cold = traced_run[0]
    spans_when(cluster, cold, {"sdk.call"})
    cluster.burst("workspace", "create", "other", check=True)
    token = cluster.burst("token", "create", "--workspace", "other", check=True).stdout.strip()
    status, err = api(cluster, "GET", f"/v1/calls/{cold}/trace", token=token)
    assert status == 404, err
    proc = burst_as(cluster, token, "trace", cold)
    assert proc.returncode != 0 and "no trace of call" in proc.stderr
    # Nor can it add spans to the call's trace: they go to its own workspace.
    sent = [{"trace_id": "1" * 32, "span_id": "2" * 16, "name": "forged", "service": "sdk",
             "start": time.time(), "end": time.time(), "call_id": cold}]
    status, _ = api(cluster, "POST", "/v1/traces", json.dumps(sent).encode(),
                    {"Content-Type": "application/json"}, token=token)
    assert status == 200
    time.sleep(0.5)
    assert "forged" not in {s["name"] for s in spans_when(cluster, cold, {"sdk.call"})}


def test_a_call_waiting_for_a_container_placed_before_it_gets_its_start(
        cluster: Cluster, app_file: Path) -> None:
    """The one container (max_containers=1) was placed for an untraced call; a traced
    call that comes while it starts has the scheduler's wait and the start in its trace."""
    proc = cluster.burst("run", "--trace", f"{app_file}::behind", check=True)
    assert "behind 2" in proc.stdout
    [call_id] = re.findall(r"burst trace (fc-[0-9a-f]{32})", proc.stdout + proc.stderr)
    want = {"sdk.call", "gateway.call", "scheduler.placement", "agent.container_start",
            "agent.input", "shim.function", *COLD_STEPS}
    s = by_name(spans_when(cluster, call_id, want))
    assert s["scheduler.placement"]["parent_id"] == s["gateway.call"]["span_id"]
    assert s["scheduler.placement"]["attributes"]["burst.placed_before"] is True
    assert s["agent.container_start"]["parent_id"] == s["scheduler.placement"]["span_id"]
    assert s["shim.enter"]["parent_id"] == s["agent.container_start"]["span_id"]
    enter = s["shim.enter"]["end"] - s["shim.enter"]["start"]
    assert 3.5 < enter < 30, enter  # the @enter's sleep


def test_a_spawned_call_is_traced(cluster: Cluster, app_file: Path) -> None:
    proc = cluster.burst("run", "--trace", f"{app_file}::spawned", check=True)
    assert "spawned 7" in proc.stdout
    [call_id] = traced_ids(proc)
    s = by_name(spans_when(cluster, call_id, {"sdk.spawn", "gateway.call", "agent.input",
                                              "shim.function"}))
    assert s["sdk.spawn"]["parent_id"] == ""
    assert s["gateway.call"]["parent_id"] == s["sdk.spawn"]["span_id"]
    assert s["agent.input"]["parent_id"] == s["gateway.call"]["span_id"]
    assert s["shim.function"]["parent_id"] == s["agent.input"]["span_id"]
    assert s["sdk.spawn"]["end"] <= s["shim.function"]["end"]  # it did not wait


def test_a_map_has_one_root_a_span_per_page_and_each_input_under_it(
        cluster: Cluster, app_file: Path) -> None:
    proc = cluster.burst("run", "--trace", f"{app_file}::mapped", check=True)
    assert "mapped [0, 1, 2, 3, 4]" in proc.stdout
    ids = traced_ids(proc)
    assert len(ids) == 5, proc.stdout + proc.stderr  # every input's trace is listed
    roots, pages = set(), set()
    for call_id in ids:
        spans = spans_when(cluster, call_id, {"sdk.map", "gateway.batch", "agent.input",
                                              "shim.function"})
        s = by_name([x for x in spans if x["name"] not in ("scheduler.placement",
                                                           "agent.container_start")
                     and x["name"] not in COLD_STEPS])
        assert s["sdk.map"]["parent_id"] == "" and s["sdk.map"]["service"] == "sdk"
        assert s["sdk.map"]["attributes"]["burst.calls"] == 5
        assert s["gateway.batch"]["parent_id"] == s["sdk.map"]["span_id"]
        assert s["gateway.batch"]["attributes"]["burst.calls"] == 5
        assert s["agent.input"]["parent_id"] == s["gateway.batch"]["span_id"]
        assert s["agent.input"]["call_id"] == call_id
        assert s["shim.function"]["parent_id"] == s["agent.input"]["span_id"]
        assert len({x["trace_id"] for x in spans}) == 1
        roots.add(s["sdk.map"]["span_id"])
        pages.add(s["gateway.batch"]["span_id"])
    assert len(roots) == 1 and len(pages) == 1  # one map, one page of 5


def test_calls_from_a_traced_container_are_under_a_relay_span(
        cluster: Cluster, app_file: Path) -> None:
    proc = cluster.burst("run", "--trace", f"{app_file}::nested", check=True)
    assert "nested 13" in proc.stdout
    [call_id] = traced_ids(proc)
    spans = spans_when(cluster, call_id, {"gateway.call", "agent.input", "shim.function",
                                          "agent.relay"})
    gateway = next(x for x in spans if x["name"] == "gateway.call")
    relays = [x for x in spans if x["name"] == "agent.relay"]
    deadline = time.monotonic() + 30
    while len(relays) < 2 and time.monotonic() < deadline:  # .remote() and the map's page
        time.sleep(0.2)
        relays = [x for x in api(cluster, "GET", f"/v1/calls/{call_id}/trace")[1]["spans"]
                  if x["name"] == "agent.relay"]
    assert len(relays) == 2, relays
    for r in relays:
        assert r["parent_id"] == gateway["span_id"] and r["service"] == "agent"
        assert r["attributes"]["burst.parent_call_id"] == call_id
    status, graph = api(cluster, "GET", f"/v1/calls/{call_id}/graph")
    assert status == 200, graph
    children = [c["call_id"] for c in graph["children"]]
    assert len(children) == 3, graph  # the .remote() and the map's two inputs
    relay_ids = {r["span_id"] for r in relays}
    for child in children:
        cs = spans_when(cluster, child, {"agent.relay", "agent.input", "shim.function"})
        inp = next(x for x in cs if x["name"] == "agent.input")
        assert inp["parent_id"] in relay_ids
        assert {x["trace_id"] for x in cs} == {gateway["trace_id"]}
        relay = next(x for x in cs if x["name"] == "agent.relay")
        assert relay["span_id"] == inp["parent_id"]


def test_a_web_request_with_the_trace_header_is_traced(cluster: Cluster,
                                                       web_base: str) -> None:
    import httpx

    r = httpx.get(f"{web_base}/hello", params={"x": 3}, headers={"X-Burst-Trace": "1"},
                  timeout=120, follow_redirects=True)
    assert r.status_code == 200 and r.json() == {"hello": 3}
    req_id = r.headers["x-burst-request-id"]
    assert re.fullmatch(r"wr-[0-9a-f]{32}", req_id)
    spans = spans_when(cluster, req_id, {"gateway.web", "agent.web_request"})
    s = {x["name"]: x for x in spans}
    assert s["gateway.web"]["parent_id"] == "" and s["gateway.web"]["service"] == "gateway"
    assert s["agent.web_request"]["parent_id"] == s["gateway.web"]["span_id"]
    assert s["agent.web_request"]["attributes"]["burst.status"] == 200
    assert s["gateway.web"]["start"] <= s["agent.web_request"]["start"]
    if "scheduler.placement" in s:  # (it started a container: its start is in the trace)
        assert s["scheduler.placement"]["parent_id"] == s["gateway.web"]["span_id"]
    out = cluster.burst("trace", req_id, check=True).stdout
    assert "agent.web_request" in out

    plain = httpx.get(f"{web_base}/hello", params={"x": 4}, timeout=120,
                      follow_redirects=True)
    assert plain.status_code == 200 and "x-burst-request-id" not in plain.headers
    bad = httpx.get(f"{web_base}/hello", headers={"X-Burst-Trace": "maybe"}, timeout=120)
    assert bad.status_code == 400 and "X-Burst-Trace" in bad.text
