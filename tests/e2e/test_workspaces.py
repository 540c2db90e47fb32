"""Two workspaces on one cluster: neither reads, names nor sees the other's data."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst import wire
from burst._serialization import deserialize, serialize
from burst.client import Client
from burst.exception import InvalidError, NotFoundError
from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

#: Above the 512 KiB inline limit: arguments and results of this size are blobs.
BIG = bytes(range(256)) * 2800  # 700 KiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cluster: Cluster) -> dict[str, str]:
    """Workspace tokens for team-a and team-b (made by the operator token)."""
    for ws in ("team-a", "team-b"):
        cluster.burst("workspace", "create", ws, check=True)
    return {ws: cluster.burst("token", "create", "--workspace", ws, check=True).stdout.strip()
            for ws in ("team-a", "team-b")}


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tokens: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same app (the same bundle bytes) deployed in both workspaces, each with its
    own token: the second workspace must upload its own copy of the bundle."""
    app = write_app(tmp_path_factory.mktemp("shared-app"), """
        import burst

        app = burst.App("shared")

        @app.function(memory=512)
        def grow(blob, factor):
            return blob * factor

        @app.function(memory=512)
        def echo(x):
            return x
    """, "shared_app.py")
    for ws in ("team-a", "team-b"):
        proc = burst_as(cluster, tokens[ws], "deploy", str(app))
        assert proc.returncode == 0, (ws, proc.stdout, proc.stderr)
    return app


def as_workspace(cluster: Cluster, token: str) -> dict[str, str]:
    return {"BURST_URL": cluster.profile["url"], "BURST_TOKEN": token}


def burst_as(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``token`` (BURST_URL and BURST_TOKEN instead of the operator's profile)."""
    return subprocess.run([BURST, *args], env={**cluster.env, **as_workspace(cluster, token)},
                          cwd=REPO, text=True, capture_output=True, timeout=120)


def client(cluster: Cluster, token: str) -> Client:
    return Client(cluster.profile["url"], token)


def http(cluster: Cluster, method: str, path: str, token: str, body: bytes | None = None,
         ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(cluster.profile["url"] + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=90) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def round_trip(c: Client) -> dict[str, str]:
    """A >512 KiB argument and result through the SDK's blob path: (arg ref, result ref,
    call id)."""
    arg_ref = c.put_blob(serialize(((BIG, 2), {})))
    resp = c.wait_call(c.call("shared", "grow", b"", arg_ref, wait=60), timeout=90)
    assert resp.status == "success", resp
    assert resp.payload_ref, "a 1.4 MB result should come back as a blob"
    assert deserialize(c.get_blob(resp.payload_ref)) == BIG * 2
    return {"arg": arg_ref, "result": resp.payload_ref, "call_id": resp.call_id}


@pytest.fixture(scope="module")
def refs_a(cluster: Cluster, tokens: dict[str, str], deployed: Path) -> dict[str, str]:
    """team-a's large argument and result (and its call), before team-b stores any."""
    return round_trip(client(cluster, tokens["team-a"]))


def test_another_workspace_cannot_read_or_probe_a_blob(
        cluster: Cluster, tokens: dict[str, str], refs_a: dict[str, str]) -> None:
    # The same 404 as a blob that does not exist.
    missing = "0" * 64
    for ref in (refs_a["arg"], refs_a["result"], missing):
        status, body = http(cluster, "GET", f"/v1/blobs/{ref}", tokens["team-b"])
        assert status == 404, (ref, status, body[:200])
        err = json.loads(body)["error"]
        assert err == {"type": "NotFound",
                       "message": f"blob {ref} not found (blobs are kept as long as results)"}
        assert http(cluster, "HEAD", f"/v1/blobs/{ref}", tokens["team-b"])[0] == 404
    assert http(cluster, "HEAD", f"/v1/blobs/{refs_a['result']}", tokens["team-a"])[0] == 200
    assert http(cluster, "GET", f"/v1/blobs/{refs_a['result']}", tokens["team-a"])[0] == 200
    # ... nor team-a's call by its id.
    with pytest.raises(NotFoundError):
        client(cluster, tokens["team-b"]).get_call(refs_a["call_id"], wait=0)


def test_another_workspace_cannot_wait_for_a_call_even_with_its_token(
        cluster: Cluster, tokens: dict[str, str], deployed: Path) -> None:
    """POST /v1/calls/wait answers a call to its own workspace only (the attempt token
    is the caller's proof, but a token that reached another workspace does not count)."""
    a, b = client(cluster, tokens["team-a"]), client(cluster, tokens["team-b"])
    [ref] = a.call_batch("shared", "echo", [serialize((("team-a's answer",), {}))])
    [mine] = a.wait_calls([ref], wait=60)
    assert deserialize(mine.payload) == "team-a's answer"
    assert b.wait_calls([ref], wait=1.0) == []
    assert b.wait_calls([wire.CallRef(call_id=ref.call_id)], wait=1.0) == []
    assert [r.call_id for r in a.wait_calls([ref], wait=1.0)] == [ref.call_id]


def test_maps_calls_dicts_and_queues_stay_in_their_workspace(
        cluster: Cluster, tokens: dict[str, str], deployed: Path) -> None:
    ta, tb = tokens["team-a"], tokens["team-b"]
    status, body = http(cluster, "POST", "/v1/apps/shared/functions/echo/maps", ta,
                        json.dumps({"inputs": [{"args": [i]} for i in range(3)]}).encode(),
                        "application/json")
    assert status == 202, body[:300]
    map_id = json.loads(body)["map_id"]
    status, body = http(cluster, "GET", f"/v1/maps/{map_id}/results?wait=60", ta)
    assert status == 200 and json.loads(body)["results"][0]["result"] == 0
    assert http(cluster, "GET", f"/v1/maps/{map_id}/results", tb)[0] == 404
    # A call of team-a's: team-b can neither read its items nor cancel it.
    [ref] = client(cluster, ta).call_batch("shared", "echo", [serialize(((1,), {}))])
    assert http(cluster, "GET", f"/v1/calls/{ref.call_id}/items", tb)[0] == 404
    assert http(cluster, "DELETE", f"/v1/calls/{ref.call_id}", tb)[0] == 404
    # Dicts and Queues by name: the same name is another object in each workspace.
    def dict_op(token: str, **req: object) -> tuple[int, bytes]:
        body = wire.encode(wire.DictRequest(name="shared-state", **req))  # type: ignore[arg-type]
        return http(cluster, "POST", "/v1/dicts", token, body, wire.MSGPACK)

    key = serialize("k")
    assert dict_op(ta, op="put", key=key, value=serialize("team-a's value"))[0] == 200
    status, body = dict_op(tb, op="get", key=key, create_if_missing=False)
    assert status == 404 and b"does not exist in workspace 'team-b'" in body
    status, body = dict_op(tb, op="get", key=key)
    assert status == 200 and wire.dict_response_decoder.decode(body).found is False
    queue = wire.encode(wire.QueueRequest(name="shared-q", op="put",
                                            values=[serialize("team-a's item")]))
    assert http(cluster, "POST", "/v1/queues", ta, queue, wire.MSGPACK)[0] == 200
    get = wire.encode(wire.QueueRequest(name="shared-q", op="get", n=1, timeout=0.5))
    status, body = http(cluster, "POST", "/v1/queues", tb, get, wire.MSGPACK)
    assert status == 200 and wire.queue_response_decoder.decode(body).values == []
    status, body = http(cluster, "POST", "/v1/queues", ta, get, wire.MSGPACK)
    assert [deserialize(v) for v in wire.queue_response_decoder.decode(body).values] == [
        "team-a's item"]


def test_another_workspace_cannot_name_a_blob_as_its_argument(
        cluster: Cluster, tokens: dict[str, str], refs_a: dict[str, str]) -> None:
    """team-b's own function would hand team-a's bytes back."""
    b = client(cluster, tokens["team-b"])
    with pytest.raises(InvalidError, match=f"blob {refs_a['arg']} is not stored in "
                                           f"workspace 'team-b'"):
        b.call("shared", "echo", b"", refs_a["arg"], wait=30)
    batch = wire.encode(wire.CallBatchRequest(payloads=[b""], payload_refs=[refs_a["arg"]]))
    status, body = http(cluster, "POST", "/v1/apps/shared/functions/echo/calls/batch",
                        tokens["team-b"], batch, wire.MSGPACK)
    assert status == 400 and b"not stored in workspace 'team-b'" in body, body[:300]


def test_the_same_large_values_in_two_workspaces(
        cluster: Cluster, tokens: dict[str, str], refs_a: dict[str, str]) -> None:
    a, b = client(cluster, tokens["team-a"]), client(cluster, tokens["team-b"])
    refs_b = round_trip(b)  # the same content as team-a's: its own copies
    assert refs_b["arg"] == refs_a["arg"] and refs_b["result"] == refs_a["result"]
    assert deserialize(a.get_blob(refs_a["result"])) == BIG * 2
    assert deserialize(b.get_blob(refs_b["result"])) == BIG * 2
    # A blob only team-b uploaded stays team-b's.
    only_b = b.put_blob(b"team-b only " * 50_000)
    with pytest.raises(NotFoundError):
        a.get_blob(only_b)
    assert b.get_blob(only_b) == b"team-b only " * 50_000


def test_large_results_inline_for_json_callers_in_each_workspace(
        cluster: Cluster, tokens: dict[str, str], deployed: Path) -> None:
    """A JSON caller's >512 KiB result is stored as a blob of the call's workspace and
    read back by the gateway with that scope; the same text in both workspaces."""
    text = "z" * (600 << 10)
    for ws in ("team-a", "team-b"):
        status, body = http(cluster, "POST", "/v1/apps/shared/functions/echo/calls?wait=60",
                            tokens[ws], json.dumps({"args": [text]}).encode(),
                            "application/json")
        assert status == 200, (ws, status, body[:300])
        assert json.loads(body)["result"] == text


def test_sdk_remote_with_large_values_in_two_workspaces(
        cluster: Cluster, tokens: dict[str, str], deployed: Path) -> None:
    code = ("import burst, hashlib\n"
            "big = bytes(range(256)) * 2800\n"
            "out = burst.Function.from_name('shared', 'grow').remote(big, 3)\n"
            "print(len(out), out == big * 3)\n")
    for ws in ("team-a", "team-b"):
        env = {**cluster.env, **as_workspace(cluster, tokens[ws])}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (ws, proc.stderr)
        assert proc.stdout.split() == [str(len(BIG) * 3), "True"], (ws, proc.stdout)


def _tar(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("secret_app.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bundles_are_scoped_to_their_workspace(cluster: Cluster, tokens: dict[str, str]) -> None:
    data = _tar("SECRET = 'team-a source'\ndef f():\n    return SECRET\n")
    h = hashlib.sha256(data).hexdigest()
    ta, tb = tokens["team-a"], tokens["team-b"]
    assert http(cluster, "PUT", f"/v1/bundles/{h}", ta, data, "application/octet-stream")[0] == 201
    assert http(cluster, "HEAD", f"/v1/bundles/{h}", ta)[0] == 200
    # team-b learns nothing: the same 404 as a bundle nobody stored.
    assert http(cluster, "HEAD", f"/v1/bundles/{h}", tb)[0] == 404
    assert http(cluster, "HEAD", f"/v1/bundles/{'1' * 64}", tb)[0] == 404
    # ... and cannot deploy team-a's source as its own app.
    req = wire.DeployRequest(app="stolen", bundle_hash=h, functions=[
        wire.FunctionSpec(name="f", module="secret_app", qualname="f")])
    with pytest.raises(InvalidError, match=f"bundle {h} is not stored in workspace 'team-b'"):
        client(cluster, tb).deploy(req)
    # ... nor mount them as an image's files added at start (copy=False: a bundle of their
    # own), with a source bundle of its own.
    mine = _tar("def f():\n    return 1\n")
    assert http(cluster, "PUT", f"/v1/bundles/{hashlib.sha256(mine).hexdigest()}", tb, mine,
                "application/octet-stream")[0] == 201
    image = wire.ImageSpec(steps=[wire.ImageStep(kind="add_local_dir", path="/data",
                                                 mounted=True, bundle=h)])
    files_req = wire.DeployRequest(
        app="stolen-files", bundle_hash=hashlib.sha256(mine).hexdigest(), functions=[
            wire.FunctionSpec(name="f", module="secret_app", qualname="f", image=image)])
    with pytest.raises(InvalidError, match=re.escape(
            f"add_local_dir at '/data' (bundle {h}) are not stored in workspace 'team-b'")):
        client(cluster, tb).deploy(files_req)
    # Uploading the same bytes makes them team-b's too.
    assert http(cluster, "PUT", f"/v1/bundles/{h}", tb, data, "application/octet-stream")[0] == 201
    assert http(cluster, "HEAD", f"/v1/bundles/{h}", tb)[0] == 200
    assert client(cluster, tb).deploy(req).workspace == "team-b"
    client(cluster, tb).remove_app("stolen")


def test_cluster_wide_views_need_an_operator_token(cluster: Cluster, tokens: dict[str, str],
                                                   deployed: Path, tmp_path: Path) -> None:
    operator = cluster.profile["token"]
    for method, path in (("GET", "/v1/status"), ("GET", "/v1/agents"),
                         ("POST", "/v1/agents/nope/preempt"), ("POST", "/v1/tokens")):
        status, body = http(cluster, method, path, tokens["team-b"],
                            b'{"workspace": "team-a", "admin": true}' if method == "POST"
                            else None, "application/json")
        assert status == 403, (path, status, body[:300])
        err = json.loads(body)["error"]
        assert err["type"] == "PermissionDenied"
        assert f"{method} {path} needs an operator token (scope 'operator'" in err["message"] \
            or (path == "/v1/tokens" and "workspace 'team-b' makes tokens for that workspace "
                "only (not 'team-a')" in err["message"]), err
        assert "workspace 'team-b'" in err["message"]
    status, body = http(cluster, "GET", "/v1/status", operator)
    assert status == 200 and json.loads(body)["agents"]
    status, body = http(cluster, "GET", "/v1/agents", operator)
    assert status == 200 and json.loads(body)["agents"]
    # The CLI says so in one line.
    proc = burst_as(cluster, tokens["team-b"], "agent", "list")
    assert proc.returncode == 1
    assert "GET /v1/agents needs an operator token" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # `burst status` from a home whose profile holds a workspace token.
    home_b = tmp_path / "home-b"
    home_b.mkdir()
    shutil.copy(cluster.home / "cluster.json", home_b / "cluster.json")
    (home_b / "profile.json").write_text(json.dumps(
        {"url": cluster.profile["url"], "token": tokens["team-b"], "workspace": "team-b"}))
    proc = cluster.burst("status", "--home", str(home_b))
    assert proc.returncode == 1
    assert "`burst status` shows every workspace's containers" in proc.stderr, proc.stderr
    assert "needs an operator token" in proc.stderr and "not healthy" not in proc.stderr
    # What a workspace needs about its own apps still works with its token.
    proc = burst_as(cluster, tokens["team-b"], "app", "status", "shared")
    assert proc.returncode == 0, proc.stderr
    assert "grow" in proc.stdout
    proc = burst_as(cluster, operator, "app", "status", "shared")
    assert proc.returncode == 1 and "not deployed in workspace" in proc.stderr
