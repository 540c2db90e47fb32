"""Redeploying a running app: rolling (the default) and recreate, versions, rollback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burst._serialization import deserialize, serialize
from burst.client import Client
from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

KEEP = 3

APP = """
import time

import burst

app = burst.App("{name}")
VERSION = "{version}"

@app.function(memory=256, scaledown_window=120)
def work(seconds: float) -> str:
    time.sleep(seconds)
    return VERSION
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, BURST_APP_HISTORY=str(KEEP))


def deploy(cluster: Cluster, folder: Path, name: str, version: str, *args: str) -> Path:
    path = write_app(folder, APP.format(name=name, version=version), f"{name}.py")
    cluster.burst("deploy", str(path), *args, check=True)
    return path


def client(cluster: Cluster) -> Client:
    return Client(cluster.profile["url"], cluster.profile["token"])


def spawn(c: Client, app: str, seconds: float) -> str:
    return c.call(app, "work", serialize(((seconds,), {})), wait=0).call_id


def result(c: Client, call_id: str) -> Any:
    resp = c.get_call(call_id, wait=90)
    assert resp.status == "success", resp
    return deserialize(resp.payload)


def containers(c: Client, app: str) -> dict[str, int]:
    out: dict[str, int] = c.get_json(f"/v1/apps/{app}/status")["functions"][0]["containers"]
    return out


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_rolling_redeploy_finishes_calls_on_the_old_code_then_stops_it(
        cluster: Cluster, tmp_path: Path) -> None:
    c = client(cluster)
    deploy(cluster, tmp_path, "rolling", "v1")
    in_flight = spawn(c, "rolling", 6.0)
    wait_for("the call to run", lambda: containers(c, "rolling").get("busy") == 1)
    out = cluster.burst("deploy", str(write_app(tmp_path, APP.format(
        name="rolling", version="v2"), "rolling.py")), check=True)
    assert "(version 2, dp-" in out.stdout + out.stderr, out
    # New calls run the new code (on a new container: the old one is busy).
    assert result(c, spawn(c, "rolling", 0.0)) == "v2"
    # The call in flight finishes on the old code...
    assert result(c, in_flight) == "v1"
    # ... and its container then stops: what is left is the new version's, and every
    # later call runs the new code.
    wait_for("the old container to stop", lambda: containers(c, "rolling") == {"idle": 1},
             timeout=30)
    assert [result(c, spawn(c, "rolling", 0.0)) for _ in range(5)] == ["v2"] * 5


def test_recreate_stops_the_old_containers_first(cluster: Cluster, tmp_path: Path) -> None:
    c = client(cluster)
    deploy(cluster, tmp_path, "recreating", "v1")
    in_flight = spawn(c, "recreating", 8.0)
    wait_for("the call to run", lambda: containers(c, "recreating").get("busy") == 1)
    started = time.monotonic()
    deploy(cluster, tmp_path, "recreating", "v2", "--strategy", "recreate")
    # The old container was stopped at once: the call ran again, on the new code.
    assert result(c, in_flight) == "v2"
    assert time.monotonic() - started > 7.0  # (a whole new run of 8 s)
    wait_for("one container", lambda: containers(c, "recreating") == {"idle": 1}, timeout=30)


def operator_token_id(cluster: Cluster) -> str:
    listed = json.loads(cluster.burst("token", "list", "--json", check=True).stdout)
    [tid] = [t["token_id"] for t in listed["tokens"] if t["scope"] == "operator"
             and t["status"] == "active"]
    return str(tid)


def test_history_and_rollback(cluster: Cluster, tmp_path: Path) -> None:
    c = client(cluster)
    hashes = []
    for v in ("v1", "v2"):
        deploy(cluster, tmp_path, "versioned", v)
        hashes.append(c.get_json("/v1/apps/versioned/history")["versions"][0]["bundle_hash"])
    assert hashes[0] != hashes[1]
    data = json.loads(cluster.burst("app", "history", "versioned", "--json", check=True).stdout)
    who = operator_token_id(cluster)
    assert [(v["version"], v["bundle_hash"], v["deployed_by"], v["current"])
            for v in data["versions"]] == [(2, hashes[1], who, True), (1, hashes[0], who, False)]
    proc = cluster.burst("app", "history", "versioned", check=True)
    table = proc.stdout + proc.stderr
    assert hashes[0][:12] in table and who in table and "running" in table
    assert result(c, spawn(c, "versioned", 0.0)) == "v2"
    # Back to the one before the running one (version 1), as version 3.
    proc = cluster.burst("app", "rollback", "versioned", check=True)
    assert "to version 1 (now version 3" in proc.stdout + proc.stderr, proc
    wait_for("the rolled-back code", lambda: result(c, spawn(c, "versioned", 0.0)) == "v1")
    data = c.get_json("/v1/apps/versioned/history")
    assert [(v["version"], v["rollback_of"], v["bundle_hash"]) for v in data["versions"]] == [
        (3, 1, hashes[0]), (2, None, hashes[1]), (1, None, hashes[0])]
    # And forward again by number.
    cluster.burst("app", "rollback", "versioned", "2", check=True)
    wait_for("version 2's code", lambda: result(c, spawn(c, "versioned", 0.0)) == "v2")
    # Bad input.
    proc = cluster.burst("app", "rollback", "versioned", "9")
    assert proc.returncode == 1
    assert "app 'versioned' has no version 9: kept versions are 2, 3, 4" in proc.stderr
    proc = cluster.burst("app", "rollback", "versioned", "1")
    assert proc.returncode == 1 and "kept versions are 2, 3, 4" in proc.stderr
    proc = cluster.burst("app", "rollback", "versioned", "4")
    assert proc.returncode == 1 and "version 4 of app 'versioned' is the one running" in proc.stderr
    proc = cluster.burst("app", "history", "never-deployed")
    assert proc.returncode == 1 and "app 'never-deployed' has no deployed versions" in proc.stderr
    # A stopped app: its versions stay, and one named by number deploys it again.
    cluster.burst("app", "stop", "versioned", check=True)
    proc = cluster.burst("app", "rollback", "versioned")
    assert proc.returncode == 1
    assert "app 'versioned' is not running: name the version to deploy again" in proc.stderr
    cluster.burst("app", "rollback", "versioned", "3", check=True)
    wait_for("version 3's code", lambda: result(c, spawn(c, "versioned", 0.0)) == "v1")
    for args in (("deploy", str(tmp_path / "versioned.py"), "--strategy", "sideways"),
                 ("app", "rollback", "versioned", "--strategy", "sideways")):
        proc = cluster.burst(*args)
        assert proc.returncode == 1, args
        assert "unknown deploy strategy 'sideways': expected rolling or recreate" in proc.stderr


def test_history_is_bounded_and_forgotten_bundles_go(cluster: Cluster, tmp_path: Path) -> None:
    c = client(cluster)
    hashes = []
    for i in range(KEEP + 2):
        deploy(cluster, tmp_path, "many", f"v{i + 1}")
        hashes.append(c.get_json("/v1/apps/many/history")["versions"][0]["bundle_hash"])
    data = c.get_json("/v1/apps/many/history")
    assert [v["version"] for v in data["versions"]] == [5, 4, 3]
    assert [v["bundle_hash"] for v in data["versions"]] == hashes[:1:-1]
    for h in hashes[:2]:
        assert not c.has_bundle(h)
    for h in hashes[2:]:
        assert c.has_bundle(h)
    proc = cluster.burst("app", "rollback", "many", "1")
    assert proc.returncode == 1 and "kept versions are 3, 4, 5" in proc.stderr
