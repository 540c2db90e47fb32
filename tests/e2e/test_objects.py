"""burst.Dict and burst.Queue: from clients and from containers that have no cluster URL,
no token and no network; and the call behaviours they make observable (idempotency,
cancellation)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_dict_and_queue_from_client_and_container(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, os, queue, socket
        import burst

        app = burst.App("objects")
        shared = burst.Dict.from_name("shared-state", create_if_missing=True)  # lazy
        jobs = burst.Queue.from_name("jobs", create_if_missing=True)

        @app.function()
        def worker():
            env = {k: v for k, v in os.environ.items() if k in ("BURST_URL", "BURST_TOKEN")}
            try:
                socket.create_connection(("127.0.0.1", 80), timeout=1).close()
                network = True
            except OSError:
                network = False
            got = [jobs.get(timeout=5) for _ in range(3)]
            shared["from-container"] = {"jobs": got}
            shared[("tuple", 1)] = 42
            try:
                jobs.get(timeout=0.2)
                empty = False
            except queue.Empty:
                empty = True
            return {"env": env, "network": network, "client_value": shared["from-client"],
                    "missing": shared.get("nope", "default"), "empty": empty,
                    "contains": "from-client" in shared}

        @app.local_entrypoint()
        def main():
            shared.clear()
            jobs.clear()
            shared["from-client"] = [1, 2, 3]
            jobs.put_many(["a", "b", "c"])
            print("queued", jobs.len())
            out = worker.remote()
            out["container_value"] = shared["from-container"]
            out["tuple_key"] = shared[("tuple", 1)]
            out["len"] = len(shared)
            out["keys"] = sorted(map(str, shared.keys()))
            out["popped"] = shared.pop("from-client")
            out["after_pop"] = "from-client" in shared
            try:
                burst.Dict.from_name("never-made").get("x")
            except burst.exception.NotFoundError as e:
                out["not_found"] = str(e)
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    assert "queued 3" in proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env"] == {}  # no cluster URL, no token inside the container
    assert out["client_value"] == [1, 2, 3] and out["contains"] is True
    assert out["container_value"] == {"jobs": ["a", "b", "c"]}  # FIFO, each once
    assert out["missing"] == "default" and out["empty"] is True
    assert out["tuple_key"] == 42 and out["len"] == 3
    assert out["keys"] == ["('tuple', 1)", "from-client", "from-container"]
    assert out["popped"] == [1, 2, 3] and out["after_pop"] is False
    assert "dict 'never-made' does not exist" in out["not_found"]


def test_network_is_unreachable_inside_sandboxed_containers(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    """The property the test above relies on, checked against the gateway's own port."""
    port = int(cluster.profile["url"].rsplit(":", 1)[1])
    app = write_app(tmp_path, f"""
        import socket
        import burst

        app = burst.App("nonet")

        @app.function()
        def probe():
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                return "reachable"
            except OSError as e:
                return "unreachable"

        @app.local_entrypoint()
        def main():
            print(probe.remote())
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "unreachable"


def _post(cluster: Cluster, path: str, body: dict, headers: dict | None = None) -> dict:
    req = urllib.request.Request(cluster.profile["url"] + path, data=json.dumps(body).encode(),
                                 method="POST")
    req.add_header("Authorization", f"Bearer {cluster.profile['token']}")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_idempotent_resubmit_executes_once_and_cancel_stops_writes(
        cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import time
        import burst

        app = burst.App("observed")
        state = burst.Dict.from_name("observed-state", create_if_missing=True)

        @app.function()
        def bump(key):
            state[key] = state.get(key, 0) + 1
            return state[key]

        @app.function()
        def writer():
            for i in range(600):
                state["ticks"] = i
                state["last_write"] = time.time()
                time.sleep(0.1)
    """, "observed_app.py")
    cluster.burst("deploy", str(app), check=True)
    key = f"run-{time.time()}"
    for _ in range(3):
        body = _post(cluster, "/v1/apps/observed/functions/bump/calls?wait=30",
                     {"args": [key]}, {"Idempotency-Key": key})
        assert body["status"] == "success" and body["result"] == 1
    # Read the counter back through a client-side Dict.
    code = f"import burst; print(burst.Dict.from_name('observed-state')[{key!r}])"
    import subprocess
    import sys

    counter = subprocess.run([sys.executable, "-c", code], env=cluster.env, text=True,
                             capture_output=True, timeout=60)
    assert counter.stdout.strip() == "1", counter.stderr

    started = _post(cluster, "/v1/apps/observed/functions/writer/calls", {})
    call_id = started["call_id"]
    reader = ("import burst, sys, time; d = burst.Dict.from_name('observed-state');\n"
              "deadline = time.time() + 30\n"
              "while d.get('ticks', -1) < 5 and time.time() < deadline: time.sleep(0.1)\n"
              "print(d.get('ticks'))")
    ticks = subprocess.run([sys.executable, "-c", reader], env=cluster.env, text=True,
                           capture_output=True, timeout=60)
    assert int(ticks.stdout.strip()) >= 5, ticks.stderr
    req = urllib.request.Request(cluster.profile["url"] + f"/v1/calls/{call_id}", method="DELETE")
    req.add_header("Authorization", f"Bearer {cluster.profile['token']}")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["cancelled"] is True
    cancelled_at = time.time()
    time.sleep(3)
    last = subprocess.run([sys.executable, "-c",
                           "import burst; "
                           "print(burst.Dict.from_name('observed-state')['last_write'])"],
                          env=cluster.env, text=True, capture_output=True, timeout=60)
    assert float(last.stdout.strip()) < cancelled_at + 2.0, "still writing 2 s after the cancel"
