"""Tokens and workspaces from the CLI, tenant isolation on every route of the API, and
`burst up` keeping one operator token per profile."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from burst import wire
from burst._serialization import deserialize, serialize
from burst.client import Client
from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

A, B = "tenant-a", "tenant-b"
#: Strings only workspace A's data holds: none may reach workspace B.
MARKERS = ("alpha", A)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory)


def http(cluster: Cluster, method: str, path: str, token: str, body: bytes | None = None,
         ctype: str | None = None, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(cluster.profile["url"] + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.headers.get("content-type", "").startswith("application/x-ndjson"):
                return r.status, r.readline()  # a log stream: its first line
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def as_token(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "BURST_URL": cluster.profile["url"], "BURST_TOKEN": token}
    return subprocess.run([BURST, *args], env=env, cwd=REPO, text=True, capture_output=True,
                          timeout=120)


@dataclass
class TenantA:
    token: str
    ids: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def tokens(cluster: Cluster) -> dict[str, str]:
    for ws in (A, B):
        cluster.burst("workspace", "create", ws, check=True)
    return {ws: cluster.burst("token", "create", "--workspace", ws, "--name", f"{ws}-admin",
                              check=True).stdout.strip() for ws in (A, B)}


@pytest.fixture(scope="module")
def tenant_a(cluster: Cluster, tokens: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> TenantA:
    """Workspace A with one of each resource; ``ids`` fills the API's path parameters."""
    ta = tokens[A]
    app = write_app(tmp_path_factory.mktemp("alpha"), """
        import burst

        app = burst.App("alpha-app")

        @app.function(memory=256)
        def alpha_fn(x):
            return ["alpha", x]

        @app.function(memory=256, schedule=burst.Period(seconds=86400))
        def alpha_tick():
            return "alpha"
    """, "alpha_app.py")
    proc = as_token(cluster, ta, "deploy", str(app))
    assert proc.returncode == 0, proc.stderr
    c = Client(cluster.profile["url"], ta)
    resp = c.wait_call(c.call("alpha-app", "alpha_fn", serialize(((1,), {})), wait=60),
                       timeout=90)
    assert resp.status == "success" and deserialize(resp.payload) == ["alpha", 1]
    status, body = http(cluster, "POST", "/v1/apps/alpha-app/functions/alpha_fn/maps", ta,
                        json.dumps({"inputs": [{"args": [2]}]}).encode(), "application/json")
    assert status == 202, body
    map_id = json.loads(body)["map_id"]
    ref = c.put_blob(b"alpha blob " * 70_000)
    for method, path, payload in (
            ("PUT", "/v1/budgets/alpha-app", {"limit": 50.0}),
            ("POST", "/v1/secrets", {"name": "alpha-secret", "values": {"ALPHA_KEY": "a"}}),
            ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/alpha-hook",
                                      "events": ["budget.exceeded"]})):
        status, body = http(cluster, method, path, ta, json.dumps(payload).encode(),
                            "application/json")
        assert status in (200, 201), (path, body)
        if path == "/v1/webhooks":
            endpoint_id = json.loads(body)["id"]
    dict_put = wire.encode(wire.DictRequest(name="alpha-dict", op="put", key=serialize("k"),
                                            value=serialize("alpha value")))
    assert http(cluster, "POST", "/v1/dicts", ta, dict_put, wire.MSGPACK)[0] == 200
    client_id = "cl-" + "a1" * 8
    assert http(cluster, "PUT", f"/v1/clients/{client_id}/heartbeat", ta)[0] == 200
    # A volume with one committed file (its chunk's hash is what B will ask for).
    for req in (wire.VolumeRequest(op="create", name=ALPHA_VOL),
                wire.VolumeRequest(op="put_chunk", name=ALPHA_VOL, data=ALPHA_BYTES),
                wire.VolumeRequest(op="commit", name=ALPHA_VOL, changes={
                    "alpha/file.txt": wire.VolumeFile(size=len(ALPHA_BYTES),
                                                      sha256=ALPHA_CHUNK)})):
        status, body = http(cluster, "POST", "/v1/volumes", ta, wire.encode(req),
                            wire.MSGPACK)
        assert status == 200, (req.op, body)
    history = c.get_json("/v1/apps/alpha-app/history")
    [token_a] = [t["token_id"] for t in c.get_json("/v1/tokens")["tokens"]
                 if t["name"] == f"{A}-admin"]
    agents = Client(cluster.profile["url"], cluster.profile["token"]).get_json("/v1/agents")
    running = c.get_json("/v1/containers", {"app": "alpha-app"})["containers"]
    return TenantA(ta, {
        "app": "alpha-app", "fn": "alpha_fn", "call_id": resp.call_id, "map_id": map_id,
        "bundle_hash": history["versions"][0]["bundle_hash"], "ref": ref,
        "client_id": client_id, "scope": "alpha-app", "endpoint_id": endpoint_id,
        "name": "alpha-secret", "agent_id": agents["agents"][0]["agent_id"],
        "token_id": token_a,
        # A's container (burst container ...), and an interactive exec's id (stdin).
        "container_id": running[0]["container_id"] if running else "ct-000000000000",
        "exec_id": "0" * 16,
    })


ALPHA_VOL = "alpha-vol"
ALPHA_BYTES = b"alpha volume bytes"
ALPHA_CHUNK = hashlib.sha256(ALPHA_BYTES).hexdigest()


def volume_probes() -> list[tuple[wire.VolumeRequest, set[int]]]:
    """``POST /v1/volumes`` addresses its volume in the body: one probe per operation, B's
    request naming A's real volume (and chunk), with the answers allowed. ``create`` goes
    last: it makes B's own volume of that name (its own namespace)."""
    v = ALPHA_VOL
    probes = [
        (wire.VolumeRequest(op="ensure", name=v), {404}),
        (wire.VolumeRequest(op="info", name=v), {404}),
        (wire.VolumeRequest(op="list"), {200}),
        (wire.VolumeRequest(op="listdir", name=v, path="/", recursive=True), {404}),
        (wire.VolumeRequest(op="entry", name=v, path="alpha/file.txt"), {404}),
        (wire.VolumeRequest(op="chunk", name=v, items=[ALPHA_CHUNK]), {404}),
        (wire.VolumeRequest(op="missing", name=v, items=[ALPHA_CHUNK]), {404}),
        (wire.VolumeRequest(op="put_chunk", name=v, data=b"b bytes"), {404}),
        (wire.VolumeRequest(op="commit", name=v, changes={
            "alpha/file.txt": wire.VolumeFile(size=len(ALPHA_BYTES), sha256=ALPHA_CHUNK)}),
         {404}),
        (wire.VolumeRequest(op="remove", name=v, path="alpha", recursive=True), {404}),
        (wire.VolumeRequest(op="copy", name=v, path="b/", items=["alpha/file.txt"]), {404}),
        (wire.VolumeRequest(op="mount_commit", name=v), {400, 404}),
        (wire.VolumeRequest(op="mount_reload", name=v), {400, 404}),
        (wire.VolumeRequest(op="delete", name=v), {404}),
        (wire.VolumeRequest(op="create", name=v), {200}),
    ]
    missing = set(typing.get_args(wire.VolumeOp)) - {r.op for r, _ in probes}
    assert not missing, f"volume operations with no tenant probe: {sorted(missing)}"
    return probes


#: Routes whose path parameter names something in the caller's own workspace (B's budget,
#: B's client, B's copy of a bundle or blob, B's log subject): any answer, as long as it
#: holds nothing of A's and A's data is untouched afterwards (checked at the end).
OWN_NAMESPACE = {
    "PUT /v1/budgets/{scope}", "PUT /v1/clients/{client_id}/heartbeat",
    "DELETE /v1/clients/{client_id}", "PUT /v1/bundles/{bundle_hash}", "PUT /v1/blobs/{ref}",
    "GET /v1/apps/{app}/logs",
    # Spans B sends for A's call id are kept in B's workspace (walked last: B's GET of that
    # call's trace before it is A's 404; A's trace is checked below).
    "POST /v1/traces",
}


#: Bodies for routes with path parameters that need one (else the answer is about the
#: missing body, not about whose object the path names).
PATH_BODIES = {
    "POST /v1/apps/{app}/functions/{fn}/maps": b'{"inputs": [{"args": [1]}]}',
    "POST /v1/apps/{app}/rollback": b"{}",
    "PUT /v1/budgets/{scope}": b'{"limit": 1.0}',
    "POST /v1/containers/{container_id}/exec": b'{"command": ["echo", "hi"]}',
}


def body_probes(a: TenantA) -> dict[str, tuple[bytes, str, set[int]]]:
    """Routes with no path parameter that take a body: B's request naming A's things
    (or trying to), and the answers allowed."""
    ids = a.ids
    js = "application/json"
    return {
        "POST /v1/apps": (wire.encode(wire.DeployRequest(
            app="stolen", bundle_hash=ids["bundle_hash"], functions=[wire.FunctionSpec(
                name="f", module="alpha_app", qualname="alpha_fn")])), wire.MSGPACK, {400}),
        "POST /v1/tokens": (json.dumps({"workspace": A}).encode(), js, {403}),
        "POST /v1/workspaces": (json.dumps({"name": "x-" + A}).encode(), js, {403}),
        "POST /v1/calls/wait": (wire.encode(wire.CallWaitRequest(
            calls=[wire.CallRef(call_id=ids["call_id"])], wait=0.5)), wire.MSGPACK, {200}),
        "POST /v1/dicts": (wire.encode(wire.DictRequest(
            name="alpha-dict", op="get", key=serialize("k"), create_if_missing=False)),
            wire.MSGPACK, {404}),
        "POST /v1/queues": (wire.encode(wire.QueueRequest(
            name="alpha-dict", op="get", n=1, timeout=0.2)), wire.MSGPACK, {200}),
        "POST /v1/secrets": (json.dumps({"name": "b-secret", "values": {"K": "b"}}).encode(),
                             js, {201}),
        "POST /v1/webhooks": (json.dumps({"url": "http://127.0.0.1:9/b-hook",
                                          "events": ["budget.exceeded"]}).encode(), js, {200}),
        "POST /v1/secrets/rotate-key": (b"", js, {403}),
        # Spans B sends for A's call id are kept in B's workspace (checked below).
        "POST /v1/traces": (json.dumps([{
            "trace_id": "b" * 32, "span_id": "b" * 16, "parent_id": "", "name": "b-probe",
            "service": "sdk", "start": 1.0, "end": 2.0, "call_id": ids["call_id"]}]).encode(),
            js, {200}),
    }


def test_every_route_answers_another_workspace_404(cluster: Cluster, tokens: dict[str, str],
                                                   tenant_a: TenantA) -> None:
    """Workspace B's admin token on every route of the OpenAPI document, with A's ids.
    A route added later is walked too: one with a new path parameter or a new body route
    fails here until the test knows how to name A's object."""
    tb = tokens[B]
    status, raw = http(cluster, "GET", "/openapi.json", tb)
    assert status == 200
    doc = json.loads(raw)
    probes = body_probes(tenant_a)
    problems: list[str] = []
    walked = 0
    ops = [(path, method) for path, item in doc["paths"].items() for method in item]
    # Routes that make something in B's own namespace last: B's budget named like A's app
    # must not stand in for A's when B's DELETE of A's is walked.
    ops.sort(key=lambda pm: f"{pm[1].upper()} {pm[0]}" in OWN_NAMESPACE)
    for path, method in ops:
        op = f"{method.upper()} {path}"
        params = re.findall(r"{(\w+)}", path)
        unknown = [p for p in params if p not in tenant_a.ids]
        if unknown:
            problems.append(f"{op}: no value of workspace A's for {unknown}")
            continue
        url = path.format(**tenant_a.ids)
        asked = url  # what B sent: an error may repeat it
        if params:
            data = PATH_BODIES.get(op, b"") if method != "get" else None
            status, body = http(cluster, method.upper(), url, tb, data,
                                "application/json" if op in PATH_BODIES
                                else "application/octet-stream", timeout=30)
            if op in OWN_NAMESPACE:
                ok = status < 500
            else:
                ok = status in (401, 403, 404)
        elif method == "get":
            status, body = http(cluster, "GET", url, tb)
            ok = status in (200, 401, 403, 404)
        elif op == "POST /v1/volumes":
            for req, allowed in volume_probes():
                data = wire.encode(req)
                status, body = http(cluster, "POST", url, tb, data, wire.MSGPACK)
                leaked = [m for m in MARKERS if m.encode() in body.lower()
                          and m not in (url + data.decode("latin-1")).lower()]
                if status not in allowed or leaked or ALPHA_BYTES in body:
                    problems.append(f"{op} op={req.op} -> {status} {body[:200]!r}"
                                    + (f" (holds {leaked})" if leaked else ""))
            walked += 1
            continue
        elif op in probes:
            data, ctype, allowed = probes[op]
            asked += data.decode("latin-1")
            status, body = http(cluster, method.upper(), url, tb, data, ctype)
            ok = status in allowed
        else:
            problems.append(f"{op}: a body route with no probe in body_probes()")
            continue
        walked += 1
        leaked = [m for m in MARKERS if m.encode() in body.lower()]
        # (An error, or B's own object, may repeat the name B asked for; nothing else
        # may say it.)
        if status >= 400 or op in OWN_NAMESPACE:
            leaked = [m for m in leaked if m not in asked.lower()]
        if not ok or leaked:
            problems.append(f"{op} -> {status} {body[:200]!r}"
                            + (f" (holds {leaked})" if leaked else ""))
    assert not problems, "\n".join(problems)
    assert walked >= 45
    # A's things are untouched.
    ta = tenant_a.token
    c = Client(cluster.profile["url"], ta)
    resp = c.wait_call(c.call("alpha-app", "alpha_fn", serialize(((3,), {})), wait=60),
                       timeout=90)
    assert deserialize(resp.payload) == ["alpha", 3]
    assert json.loads(http(cluster, "GET", "/v1/secrets/alpha-secret", ta)[1])["keys"] == [
        "ALPHA_KEY"]
    assert [b["limit"] for b in json.loads(http(cluster, "GET", "/v1/budgets", ta)[1])[
        "budgets"]] == [50.0]
    hooks = json.loads(http(cluster, "GET", "/v1/webhooks", ta)[1])
    assert [h["id"] for h in hooks["webhooks"]] == [tenant_a.ids["endpoint_id"]]
    schedules = json.loads(http(cluster, "GET", "/v1/schedules", ta)[1])["schedules"]
    assert [s["paused"] for s in schedules] == [False]
    get = wire.encode(wire.DictRequest(name="alpha-dict", op="get", key=serialize("k")))
    status, body = http(cluster, "POST", "/v1/dicts", ta, get, wire.MSGPACK)
    assert deserialize(wire.dict_response_decoder.decode(body).value) == "alpha value"
    assert c.has_bundle(tenant_a.ids["bundle_hash"])
    # B's span named A's call: A's call has no trace of B's.
    status, body = http(cluster, "GET", f"/v1/calls/{tenant_a.ids['call_id']}/trace", ta)
    assert status in (200, 404) and b"b-probe" not in body, (status, body[:300])
    # A's volume: its file, its bytes, alone in A's listing.
    for req, check in (
            (wire.VolumeRequest(op="list"),
             lambda r: [v.name for v in r.volumes] == [ALPHA_VOL]),
            (wire.VolumeRequest(op="listdir", name=ALPHA_VOL, path="/", recursive=True),
             lambda r: sorted(e.path for e in r.entries) == ["alpha", "alpha/file.txt"]),
            (wire.VolumeRequest(op="chunk", name=ALPHA_VOL, items=[ALPHA_CHUNK]),
             lambda r: r.data == ALPHA_BYTES)):
        status, body = http(cluster, "POST", "/v1/volumes", ta, wire.encode(req),
                            wire.MSGPACK)
        assert status == 200 and check(wire.volume_response_decoder.decode(body)), (
            req.op, body)


def test_scopes_from_the_cli(cluster: Cluster, tokens: dict[str, str],
                             tenant_a: TenantA) -> None:
    read = as_token(cluster, tokens[A], "token", "create", "--workspace", A, "--scope", "read")
    assert read.returncode == 0, read.stderr
    r = read.stdout.strip()
    assert as_token(cluster, r, "app", "list").returncode == 0
    proc = as_token(cluster, r, "app", "stop", "alpha-app")
    assert proc.returncode == 1
    assert "DELETE /v1/apps/alpha-app needs a token of scope 'deploy' or above" in proc.stderr
    code = ("import burst\nprint(burst.Function.from_name('alpha-app', 'alpha_fn').remote(4))")
    env = {**cluster.env, "BURST_URL": cluster.profile["url"], "BURST_TOKEN": r}
    proc = subprocess.run([str(Path(BURST).parent / "python"), "-c", code], env=env,
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and "needs a token of scope 'invoke'" in proc.stderr
    inv = as_token(cluster, tokens[A], "token", "create", "--workspace", A, "--scope",
                   "invoke").stdout.strip()
    proc = subprocess.run([str(Path(BURST).parent / "python"), "-c", code],
                          env={**env, "BURST_TOKEN": inv}, text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "['alpha', 4]", proc.stderr


def test_token_and_workspace_cli(cluster: Cluster) -> None:
    cluster.burst("workspace", "create", "cli-ws", check=True)
    listed = cluster.burst("workspace", "list", check=True).stdout
    assert "cli-ws" in listed and "default" in listed
    token = cluster.burst("token", "create", "--workspace", "cli-ws", "--scope", "invoke",
                          "--expires", "30d", "--name", "ci-bot", check=True).stdout.strip()
    assert token.startswith("bst_")
    data = json.loads(cluster.burst("token", "list", "--workspace", "cli-ws", "--json",
                                    check=True).stdout)
    [row] = data["tokens"]
    assert row["scope"] == "invoke" and row["name"] == "ci-bot" and row["status"] == "active"
    assert 29.9 * 86400 < row["expires_at"] - time.time() <= 30 * 86400
    assert as_token(cluster, token, "app", "list").returncode == 0
    table = cluster.burst("token", "list", check=True).stdout
    assert row["token_id"] in table and "ci-bot" in table and token not in table
    cluster.burst("token", "revoke", row["token_id"], check=True)
    deadline = time.monotonic() + 5.0
    while True:
        proc = as_token(cluster, token, "app", "list")
        if proc.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert proc.returncode == 1 and "invalid token: it was revoked" in proc.stderr
    # Bad input, each a one-line error.
    cases = [
        (("token", "create", "--workspace", "cli-ws", "--scope", "root"),
         "unknown scope 'root': expected one of read, invoke, deploy, admin, operator"),
        (("token", "create", "--workspace", "cli-ws", "--expires", "30x"),
         "invalid duration '30x': expected a number and one of s, m, h, d, w"),
        (("token", "create", "--workspace", "cli-ws", "--expires", "0d"), "invalid duration"),
        (("token", "create", "--workspace", "nowhere"),
         "workspace 'nowhere' does not exist: create it with `burst workspace create nowhere`"),
        (("token", "revoke", "tk-nope"), "token 'tk-nope' not found"),
        (("workspace", "create", "cli-ws"), "workspace 'cli-ws' already exists"),
        (("workspace", "create", "Bad Name"), "'Bad Name'"),
    ]
    for args, message in cases:
        proc = cluster.burst(*args)
        assert proc.returncode == 1, args
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_an_expired_token(cluster: Cluster) -> None:
    # Wide enough that a loaded machine still uses it before it expires.
    token = cluster.burst("token", "create", "--workspace", "default", "--scope", "read",
                          "--expires", "12s", check=True).stdout.strip()
    made = time.monotonic()  # it expires before made + 12
    assert as_token(cluster, token, "app", "list").returncode == 0
    time.sleep(max(0.0, made + 13 - time.monotonic()))
    proc = as_token(cluster, token, "app", "list")
    assert proc.returncode == 1 and "invalid token: it was expired" in proc.stderr


def active_operators(cluster: Cluster) -> list[str]:
    data = json.loads(cluster.burst("token", "list", "--json", check=True).stdout)
    return [t["token_id"] for t in data["tokens"]
            if t["scope"] == "operator" and t["status"] == "active"]


def test_burst_up_again_keeps_one_operator_token(cluster: Cluster) -> None:
    """(Last in the module: it restarts the cluster.)"""
    before = cluster.profile["token"]
    [op] = active_operators(cluster)
    for _ in range(2):
        cluster.burst("down", check=True, timeout=60)
        cluster.burst("up", "--timeout", "90", check=True, timeout=110)
        assert cluster.profile["token"] == before
        assert active_operators(cluster) == [op]
    # A profile lost: the new `burst up` token replaces the old one, which stops working.
    cluster.burst("down", check=True, timeout=60)
    (cluster.home / "profile.json").unlink()
    cluster.burst("up", "--timeout", "90", check=True, timeout=110)
    assert cluster.profile["token"] != before
    assert len(active_operators(cluster)) == 1 and active_operators(cluster) != [op]
    status, body = http(cluster, "GET", "/v1/apps", before)
    assert status == 401 and b"revoked" in body
