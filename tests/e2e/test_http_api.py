"""The HTTP API for callers that are not Python: JSON calls, long-polls, idempotency,
cancellation, and errors as JSON."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

APP = """
    import time
    import burst

    app = burst.App("httpapi")
    executions = {"n": 0}

    @app.function(max_containers=1)
    def add(a, b=0):
        return {"sum": a + b}

    @app.function(max_containers=1)
    def count():
        executions["n"] += 1
        return executions["n"]

    @app.function()
    def fails(x):
        raise ValueError(f"no good: {x}")

    @app.function()
    def slow(seconds):
        time.sleep(seconds)
        return "slept"

    @app.function()
    def as_float(*xs):
        return [float(x) for x in xs]
"""


def request(cluster: Cluster, method: str, path: str, body: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    data = (None if body is None
            else body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(cluster.profile["url"] + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {cluster.profile['token']}")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    app = write_app(tmp_path_factory.mktemp("httpapi"), APP, "httpapi_app.py")
    cluster.burst("deploy", str(app), check=True)
    return cluster


def test_json_call_sync_and_async(deployed: Cluster) -> None:
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/calls?wait=30",
                              {"args": [2], "kwargs": {"b": 40}})
    assert status == 200 and body["status"] == "success" and body["result"] == {"sum": 42}
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/slow/calls",
                              {"args": [0.5]})
    assert status == 202 and body["status"] == "pending"
    call_id = body["call_id"]
    status, body, _ = request(deployed, "GET", f"/v1/calls/{call_id}?wait=30")
    assert status == 200 and body["result"] == "slept"


def _stored_record(cluster: Cluster, call_id: str) -> dict | None:
    from tests.e2e.test_retries import _call_record

    try:
        return _call_record(cluster, call_id)
    except Exception as e:  # nats-py: KeyNotFoundError
        if type(e).__name__ != "KeyNotFoundError":
            raise
        return None


def test_a_call_answered_in_its_wait_is_found_by_id_without_a_record(
        deployed: Cluster) -> None:
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/calls?wait=30",
                              {"args": [1], "kwargs": {"b": 2}})
    assert status == 200 and body["result"] == {"sum": 3}
    call_id = body["call_id"]
    # Its input and output are stored; its record never was (nobody asked for it yet).
    assert _stored_record(deployed, call_id) is None
    status, got, _ = request(deployed, "GET", f"/v1/calls/{call_id}")
    assert status == 200 and got == body
    status, items, _ = request(deployed, "GET", f"/v1/calls/{call_id}/items")
    assert status == 200 and items["items"] == [] and items["final"]["result"] == {"sum": 3}
    # Another workspace does not see it, by the output's workspace.
    deployed.burst("workspace", "create", "lazy-b", check=True)
    other = deployed.burst("token", "create", "--workspace", "lazy-b", check=True).stdout.strip()
    status, err, _ = request(deployed, "GET", f"/v1/calls/{call_id}",
                             headers={"Authorization": f"Bearer {other}"})
    assert status == 404 and err["error"]["type"] == "NotFound"
    status, err, _ = request(deployed, "DELETE", f"/v1/calls/{call_id}",
                             headers={"Authorization": f"Bearer {other}"})
    assert status == 404
    # A call whose wait ends first has its record before the caller hears of it.
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/slow/calls?wait=0.2",
                              {"args": [1.5]})
    assert status == 202 and body["status"] == "pending"
    record = _stored_record(deployed, body["call_id"])
    assert record is not None and record["call_id"] == body["call_id"]
    assert record["workspace"] == "default" and record.get("attempt", 1) == 1
    status, got, _ = request(deployed, "GET", f"/v1/calls/{body['call_id']}?wait=30")
    assert status == 200 and got["result"] == "slept"


def test_json_errors(deployed: Cluster) -> None:
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/fails/calls?wait=30",
                              {"args": ["x"]})
    assert status == 200 and body["status"] == "failure"
    assert body["error"]["type"] == "ValueError" and body["error"]["message"] == "no good: x"
    assert "in fails" in body["error"]["traceback"]
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/calls",
                              b"{not json")
    assert status == 400 and body["error"]["type"] == "InvalidInput"
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/calls",
                              {"args": 5})
    assert status == 400 and '"args" must be a list' in body["error"]["message"]
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/nope/calls",
                              {"args": []})
    assert status == 404 and "has no function 'nope'" in body["error"]["message"]
    status, body, _ = request(deployed, "GET", "/v1/calls/fc-nonsense")
    assert status == 404


def test_idempotency_key_runs_once(deployed: Cluster) -> None:
    key = {"Idempotency-Key": f"order-{time.time()}"}
    s1, b1, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/count/calls?wait=30",
                        {}, key)
    s2, b2, h2 = request(deployed, "POST", "/v1/apps/httpapi/functions/count/calls?wait=30",
                         {}, key)
    assert s1 == s2 == 200
    assert b1["call_id"] == b2["call_id"] and b1["result"] == b2["result"]
    assert {k.lower(): v for k, v in h2.items()}.get("idempotent-replayed") == "true"
    # Another key runs again: the counter in the (single) container moved by one only.
    _, b3, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/count/calls?wait=30",
                       {}, {"Idempotency-Key": f"other-{time.time()}"})
    assert b3["result"] == b1["result"] + 1


def test_cancel_stops_a_running_call(deployed: Cluster) -> None:
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/slow/calls",
                              {"args": [60]})
    call_id = body["call_id"]
    time.sleep(1.5)  # let it start
    t0 = time.time()
    status, body, _ = request(deployed, "DELETE", f"/v1/calls/{call_id}")
    assert status == 200 and body["cancelled"] is True
    status, body, _ = request(deployed, "GET", f"/v1/calls/{call_id}?wait=10")
    assert body["status"] == "terminated"
    assert time.time() - t0 < 5
    # Cancelling a finished call changes nothing.
    _, done, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/calls?wait=30",
                         {"args": [1]})
    status, body, _ = request(deployed, "DELETE", f"/v1/calls/{done['call_id']}")
    assert body == {"call_id": done["call_id"], "cancelled": False, "status": "success"}


def test_sdk_cancel_raises_input_cancellation(deployed: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import time, json
        import burst

        app = burst.App("cancelling")

        @app.function()
        def slow():
            time.sleep(60)

        @app.local_entrypoint()
        def main():
            call = slow.spawn()
            time.sleep(1.0)
            t0 = time.time()
            out = {"cancelled": call.cancel()}
            try:
                call.get(timeout=10)
            except burst.exception.InputCancellation as e:
                out["error"] = str(e)
            out["took"] = time.time() - t0
            print(json.dumps(out))
    """)
    proc = deployed.burst("run", str(app), check=True, timeout=60)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cancelled"] is True and "was cancelled" in out["error"] and out["took"] < 5


def test_openapi_documents_the_call_api(deployed: Cluster) -> None:
    with urllib.request.urlopen(deployed.profile["url"] + "/openapi.json", timeout=10) as r:
        doc = json.loads(r.read())
    paths = doc["paths"]
    assert "post" in paths["/v1/apps/{app}/functions/{fn}/calls"]
    assert "delete" in paths["/v1/calls/{call_id}"]
    assert "/v1/calls/wait" in paths and "/v1/apps/{app}/functions/{fn}/calls/batch" in paths


def test_http_map_with_paged_ordered_results(deployed: Cluster) -> None:
    inputs = [{"args": [i], "kwargs": {"b": 1000}} for i in range(50)]
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/maps",
                              {"inputs": inputs})
    assert status == 202 and body["count"] == 50
    map_id = body["map_id"]
    results, offset = [], 0
    deadline = time.time() + 60
    while offset < 50 and time.time() < deadline:
        status, page, _ = request(deployed, "GET",
                                  f"/v1/maps/{map_id}/results?offset={offset}&limit=20&wait=10")
        assert status == 200
        assert len(page["results"]) <= 20 and page["next_offset"] == offset + len(page["results"])
        results += page["results"]
        offset = page["next_offset"]
    assert [r["result"]["sum"] for r in results] == [i + 1000 for i in range(50)]
    assert page["finished"] is True
    status, body, _ = request(deployed, "POST", "/v1/apps/httpapi/functions/add/maps",
                              {"inputs": []})
    assert status == 400 and "a map holds 1 to 10000 inputs, got 0" in body["error"]["message"]
    status, body, _ = request(deployed, "GET", "/v1/maps/mp-unknown/results")
    assert status == 404


def test_non_finite_results_over_http(deployed: Cluster) -> None:
    """NaN and infinities from a real container: standard JSON answers (strings), at once
    and read back by id (before: 500 on every read)."""
    path = "/v1/apps/httpapi/functions/as_float/calls"
    status, body, _ = request(deployed, "POST", path + "?wait=30",
                              {"args": ["nan", "inf", "-inf", "0.5"]})
    assert status == 200, body
    assert body["result"] == ["NaN", "Infinity", "-Infinity", 0.5]
    status, again, _ = request(deployed, "GET", f"/v1/calls/{body['call_id']}?wait=30")
    assert status == 200 and again == body
