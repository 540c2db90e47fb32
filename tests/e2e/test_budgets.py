"""A hard budget on a real cluster: calls refused with 402, containers stopped, and the
same app in another workspace untouched."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BURST, Cluster
from tests.e2e.test_hello import _nats_url, write_app

pytestmark = pytest.mark.e2e

APP = """
    import burst

    app = burst.App("capped")

    @app.function(scaledown_window=600, cpu=1.0)
    def work(x):
        return x + 1
"""


def request(cluster: Cluster, token: str, method: str, path: str,
            body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.profile["url"] + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def containers_of(cluster: Cluster, prefix: str) -> list[str]:
    async def go() -> list[str]:
        import nats
        from nats.js.errors import KeyNotFoundError, NoKeysError

        from burst_core.schemas import AgentHeartbeatDecoder

        nc = await nats.connect(_nats_url(cluster))
        kv = await nc.jetstream().key_value("burst_heartbeats")
        out = []
        try:
            keys = await kv.keys()
        except NoKeysError:  # no agent's heartbeat stored at this instant
            keys = []
        for k in keys:
            try:
                entry = await kv.get(k)
            except KeyNotFoundError:  # the agent left meanwhile
                continue
            if entry.value is None:
                continue
            hb = AgentHeartbeatDecoder.decode(entry.value)
            out += [c.container_id for c in hb.containers if c.fn_key.startswith(prefix)]
        await nc.close()
        return out
    return asyncio.run(go())


def test_hard_cap_stops_calls_and_containers_of_its_workspace_only(
    cluster: Cluster, tmp_path: Path
) -> None:
    app = write_app(tmp_path, APP, "capped_app.py")
    cluster.burst("deploy", str(app), check=True)
    admin = cluster.profile["token"]
    cluster.burst("workspace", "create", "budget-b", check=True)
    other = cluster.burst("token", "create", "--workspace", "budget-b", check=True).stdout.strip()
    env_b = {**cluster.env, "BURST_URL": cluster.profile["url"], "BURST_TOKEN": other}
    for token in (admin, other):
        if token == other:
            proc = subprocess.run([BURST, "deploy", str(app)], env=env_b, text=True,
                                  capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        status, body = request(cluster, token, "POST", "/v1/apps/capped/functions/work/calls"
                               "?wait=60", {"args": [1]})
        assert status == 200 and body["result"] == 2, body
    # Both workspaces now have a warm container. A hard cap of a tiny amount on the first.
    cluster.burst("budget", "set", "capped", "--limit", "0.000001", "--hard", check=True)
    deadline = time.time() + 30
    while True:
        status, body = request(cluster, admin, "POST",
                               "/v1/apps/capped/functions/work/calls?wait=30", {"args": [1]})
        if status == 402:
            break
        assert time.time() < deadline, f"never refused: {status} {body}"
        time.sleep(0.3)
    msg = body["error"]["message"]
    assert body["error"]["type"] == "BudgetExceeded"
    assert "'capped'" in msg and "$0.00" in msg and "spend" in msg
    # The scope's containers scale to zero (metering interval 1 s in these tests).
    deadline = time.time() + 15
    while containers_of(cluster, "default.capped."):
        assert time.time() < deadline, "the capped app's container kept running"
        time.sleep(0.3)
    listed = json.loads(cluster.burst("budget", "list", "--json", check=True).stdout)
    state = listed["budgets"][0]["state"]
    assert state["exceeded"] and state["overshoot"] > 0
    # The other workspace's same-named app still runs, and its container lives on.
    status, body = request(cluster, other, "POST", "/v1/apps/capped/functions/work/calls"
                           "?wait=60", {"args": [5]})
    assert status == 200 and body["result"] == 6, body
    assert containers_of(cluster, "budget-b.capped.")
    # Clearing the budget reopens the scope.
    cluster.burst("budget", "clear", "capped", check=True)
    deadline = time.time() + 15
    while True:
        status, body = request(cluster, admin, "POST",
                               "/v1/apps/capped/functions/work/calls?wait=60", {"args": [1]})
        if status == 200:
            break
        assert time.time() < deadline, f"still refused after clear: {body}"
        time.sleep(0.3)
    assert body["result"] == 2
