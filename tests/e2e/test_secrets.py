"""Secrets on a real cluster: values reach containers (in Modal's override order) and
nowhere else; required keys, workspaces, updates and master key rotation.

Functions here answer sha256 digests of what they see, never values, so that the last
test can scan the NATS store, Redis and every log for the values and find none.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import burst
from burst.client import Client
from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_workspaces import as_workspace, http

pytestmark = pytest.mark.e2e

#: Every value stored or sent in this module: none may be found at rest or in a log.
VALUES = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in (
    "API_KEY", "STORED_SHARED", "DOT", "DOT_SHARED", "LOCAL_TOKEN", "DICT_SHARED", "OLD",
    "NEW", "FROM_JSON", "OTHER_WS")}


def digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]


APP = '''
import hashlib, os, time

import burst

app = burst.App("secret-app", secrets=[
    burst.Secret.from_name("creds", required_keys=["API_KEY"])])

code_secrets = [burst.Secret.from_dotenv(), burst.Secret.from_local_environ(["LOCAL_TOKEN"]),
                # (not a literal: the source itself travels in the app's bundle)
                burst.Secret.from_dict({"SHARED": os.environ.get("DICT_SHARED_SRC", "")})]


def seen(keys):
    return {k: (hashlib.sha256(os.environ[k].encode()).hexdigest()[:16]
                if k in os.environ else None) for k in keys}


@app.function(secrets=code_secrets)
def env(keys):
    return seen(keys)


@app.function()
def app_only(keys):
    return seen(keys)


@app.function(secrets=code_secrets)
def after_rotation(keys):
    return seen(keys)


@app.function(scaledown_window=300, secrets=[burst.Secret.from_name("rotating")])
def held(block):
    value = seen(["K"])["K"]
    if block:
        flags = burst.Dict.from_name("secret-test-flags", create_if_missing=True)
        flags["holding"] = os.environ["BURST_CONTAINER_ID"]
        deadline = time.time() + 90
        while not flags.get("release") and time.time() < deadline:
            time.sleep(0.2)
    return [os.environ["BURST_CONTAINER_ID"], value]
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory)


def client(cluster: Cluster) -> Client:
    return Client(cluster.profile["url"], cluster.profile["token"])


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secret-app")
    (d / "secret_app.py").write_text(textwrap.dedent(APP))
    (d / ".env").write_text(f"# made by the test\nDOT={VALUES['DOT']}\n"
                            f"SHARED=\"{VALUES['DOT_SHARED']}\"\n")
    cluster.burst("secret", "create", "creds", f"API_KEY={VALUES['API_KEY']}",
                  f"SHARED={VALUES['STORED_SHARED']}", check=True)
    cluster.burst("secret", "create", "rotating", f"K={VALUES['OLD']}", check=True)
    proc = subprocess.run([BURST, "deploy", "secret_app.py"], cwd=d, text=True,
                          capture_output=True, timeout=120,
                          env={**cluster.env, "LOCAL_TOKEN": VALUES["LOCAL_TOKEN"],
                               "DICT_SHARED_SRC": VALUES["DICT_SHARED"]})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d


def call(cluster: Cluster, fn: str, *args: object) -> object:
    f = burst.Function.from_name("secret-app", fn, client=client(cluster))
    return f.remote(*args)


def test_values_reach_the_container_in_override_order(cluster: Cluster,
                                                      deployed: Path) -> None:
    keys = ["API_KEY", "DOT", "LOCAL_TOKEN", "SHARED", "NOT_SET"]
    # App secrets first, then the function's in order: the dict's SHARED wins.
    assert call(cluster, "env", keys) == {
        "API_KEY": digest(VALUES["API_KEY"]), "DOT": digest(VALUES["DOT"]),
        "LOCAL_TOKEN": digest(VALUES["LOCAL_TOKEN"]),
        "SHARED": digest(VALUES["DICT_SHARED"]), "NOT_SET": None}
    assert call(cluster, "app_only", ["API_KEY", "SHARED", "DOT"]) == {
        "API_KEY": digest(VALUES["API_KEY"]), "SHARED": digest(VALUES["STORED_SHARED"]),
        "DOT": None}


def test_list_shows_keys_never_values(cluster: Cluster, deployed: Path) -> None:
    out = cluster.burst("secret", "list", "--json", check=True).stdout
    data = {s["name"]: s for s in json.loads(out)["secrets"]}
    assert data["creds"]["keys"] == ["API_KEY", "SHARED"]
    assert data["creds"]["created_at"] <= data["creds"]["updated_at"]
    table = cluster.burst("secret", "list", check=True).stdout
    status = cluster.burst("app", "status", "secret-app", "--json", check=True).stdout
    for v in VALUES.values():
        assert v not in out and v not in table and v not in status


def test_missing_required_key_or_secret_fails_the_deploy(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    app = tmp_path / "needs_key.py"
    app.write_text(textwrap.dedent('''
        import burst
        app = burst.App("needs-key")

        @app.function(secrets=[burst.Secret.from_name("creds",
                                                      required_keys=["API_KEY", "NOPE_KEY"])])
        def f():
            return 1
    '''))
    proc = cluster.burst("deploy", str(app))
    assert proc.returncode != 0
    assert "secret 'creds' is missing required key(s) NOPE_KEY" in proc.stderr, proc.stderr
    app.write_text(app.read_text().replace('"creds"', '"no-such-secret"'))
    proc = cluster.burst("deploy", str(app))
    assert proc.returncode != 0
    assert "secret 'no-such-secret' not found in workspace 'default'" in proc.stderr
    listing = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)
    assert not any(a["app"] == "needs-key" for a in listing["apps"])


def test_bad_input_is_named(cluster: Cluster, tmp_path: Path) -> None:
    proc = cluster.burst("secret", "create", "bad", "9LIVES=x")
    assert proc.returncode != 0 and "key '9LIVES' is not an environment variable name" in (
        proc.stderr)
    proc = cluster.burst("secret", "create", "bad.name", "A=x")
    assert proc.returncode != 0 and "invalid secret name 'bad.name'" in proc.stderr
    env = tmp_path / "broken.env"
    env.write_text(f"GOOD=1\nBROKEN {VALUES['OTHER_WS']}\n")
    proc = cluster.burst("secret", "create", "bad", "--from-dotenv", str(env))
    assert proc.returncode != 0 and "broken.env, line 2: expected KEY=VALUE" in proc.stderr
    assert VALUES["OTHER_WS"] not in proc.stderr
    proc = cluster.burst("secret", "create", "creds", "A=x")
    assert proc.returncode != 0 and "already exists" in proc.stderr and "--force" in proc.stderr
    js = tmp_path / "vals.json"
    js.write_text(json.dumps({"FROM_JSON": VALUES["FROM_JSON"]}))
    cluster.burst("secret", "create", "from-json", "--from-json", str(js), check=True)
    proc = cluster.burst("secret", "delete", "no-such-secret")
    assert proc.returncode != 0 and "secret 'no-such-secret' not found" in proc.stderr
    cluster.burst("secret", "delete", "from-json", check=True)


def test_another_workspace_gets_404(cluster: Cluster, deployed: Path, tmp_path: Path) -> None:
    cluster.burst("workspace", "create", "other-ws", check=True)
    token = cluster.burst("token", "create", "--workspace", "other-ws", check=True).stdout.strip()
    for method in ("GET", "DELETE"):
        status, body = http(cluster, method, "/v1/secrets/creds", token)
        assert status == 404, (method, status, body)
        assert json.loads(body)["error"]["type"] == "NotFound"
    status, body = http(cluster, "GET", "/v1/secrets", token)
    assert status == 200 and json.loads(body)["secrets"] == []
    # Its own secret of the same name is its own; the default workspace's is unchanged.
    status, body = http(cluster, "POST", "/v1/secrets", token, json.dumps(
        {"name": "creds", "values": {"API_KEY": VALUES["OTHER_WS"]}}).encode(),
        "application/json")
    assert status == 201, body
    app = tmp_path / "other_ws_app.py"
    app.write_text(textwrap.dedent('''
        import burst
        app = burst.App("other-ws-app")

        @app.function(secrets=[burst.Secret.from_name("creds", required_keys=["SHARED"])])
        def f():
            return 1
    '''))
    proc = subprocess.run([BURST, "deploy", str(app)], cwd=REPO, text=True,
                          capture_output=True, timeout=120,
                          env={**cluster.env, **as_workspace(cluster, token)})
    assert proc.returncode != 0 and "missing required key(s) SHARED" in proc.stderr
    assert call(cluster, "app_only", ["API_KEY"]) == {"API_KEY": digest(VALUES["API_KEY"])}


def test_forced_update_reaches_new_containers_not_running_ones(
        cluster: Cluster, deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_cid, value = call(cluster, "held", False)  # type: ignore[misc]
    assert value == digest(VALUES["OLD"])
    cluster.burst("secret", "create", "rotating", f"K={VALUES['NEW']}", "--force", check=True)
    # The running container keeps what it started with.
    assert call(cluster, "held", False) == [first_cid, digest(VALUES["OLD"])]
    monkeypatch.setenv("BURST_URL", cluster.profile["url"])
    monkeypatch.setenv("BURST_TOKEN", cluster.profile["token"])
    flags = burst.Dict.from_name("secret-test-flags", create_if_missing=True)
    held = burst.Function.from_name("secret-app", "held")
    holding = held.spawn(True)
    deadline = time.time() + 60
    while flags.get("holding") is None and time.time() < deadline:
        time.sleep(0.2)
    assert flags.get("holding") == first_cid
    # The warm container is busy: this call starts another, after the update.
    second_cid, value = held.remote(False)
    flags["release"] = True
    assert second_cid != first_cid and value == digest(VALUES["NEW"])
    assert holding.get(timeout=60) == [first_cid, digest(VALUES["OLD"])]


def test_rotated_master_key_still_opens_every_secret(cluster: Cluster,
                                                     deployed: Path) -> None:
    key_file = cluster.home / "secrets.key"
    old = key_file.read_text().split()
    out = " ".join(cluster.burst("secret", "rotate-key", check=True).stdout.split())
    keys = key_file.read_text().split()
    assert len(keys) == 2 and keys[1:] == old[:1]
    # creds and rotating here, creds of other-ws (when its test ran); env's and
    # after_rotation's three code-made secrets each.
    assert re.search(r"re-wrapped [23] stored secrets and 6 secrets made in code", out), out
    # Drop the old key: the gateway re-reads the ring, and nothing needs it any more.
    key_file.write_text(keys[0] + "\n")
    out = " ".join(cluster.burst("secret", "rotate-key", "--rewrap-only",
                                 check=True).stdout.split())
    assert "(1 in the ring); re-wrapped 0 stored secrets and 0" in out, out
    # A container started now opens the stored and the code-made secrets under the new key.
    assert call(cluster, "after_rotation", ["API_KEY", "LOCAL_TOKEN", "SHARED"]) == {
        "API_KEY": digest(VALUES["API_KEY"]), "LOCAL_TOKEN": digest(VALUES["LOCAL_TOKEN"]),
        "SHARED": digest(VALUES["DICT_SHARED"])}


def test_no_value_in_the_store_redis_or_logs(cluster: Cluster, deployed: Path) -> None:
    """Last: every value of this module has been stored, sent and used by now."""
    import redis

    found: list[str] = []
    needles = {k: v.encode() for k, v in VALUES.items()}
    files = [p for p in (cluster.home / "nats").rglob("*") if p.is_file()]
    files += [p for p in (cluster.home / "logs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".blk" for p in files), "no NATS store files to scan"
    # The scan reads where secrets live: their names and key names are there, in clear.
    assert any(b"rotating" in p.read_bytes() for p in files if p.suffix == ".blk")
    for p in files:
        data = p.read_bytes()
        found += [f"{k} in {p}" for k, v in needles.items() if v in data]
    state = json.loads((cluster.home / "cluster.json").read_text())
    # Every service's log file is among those scanned (nats, redis, gateway, scheduler,
    # billing, each agent: whatever this cluster started).
    logged = {p.stem for p in files if p.parent == cluster.home / "logs"}
    parts = {p["name"] for p in state["parts"]}
    assert {"gateway", "nats", "redis"} <= parts and parts <= logged, (parts, logged)
    port = next(p["ports"] for p in state["parts"] if p["name"] == "redis")
    r = redis.Redis(host="127.0.0.1", port=next(iter(port.values())))
    keys = list(r.scan_iter(count=1000))
    for key in keys:
        data = key + (r.dump(key) or b"")
        found += [f"{k} in redis {key!r}" for k, v in needles.items() if v in data]
    r.close()
    assert found == [], found
