"""Volumes on a real cluster: Modal's consistency (commit, reload, concurrent commits),
client and container file operations, a 1 GiB file through a 256 MiB container, the
agent's cache, other workspaces, and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import os
import subprocess
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest

import burst
from burst import volume as sdk_volume
from burst import wire
from burst.client import Client
from burst.exception import ConflictError, InvalidError, NotFoundError, ResourceExhaustedError
from tests.e2e.conftest import BURST, Cluster, running_cluster
from tests.e2e.test_hello import _nats_url
from tests.e2e.test_workspaces import as_workspace
from tests.e2e.test_workspaces import http as http_call

pytestmark = pytest.mark.e2e

BIG = 1 << 30
#: The per-volume limit of this module's cluster: above the 1 GiB file, below two.
LIMIT = BIG + (64 << 20)

APP = '''
import hashlib, os, time

import burst

data = burst.Volume.from_name("vt-data", create_if_missing=True)
big = burst.Volume.from_name("vt-big")
app = burst.App("vol-app")


@app.function(volumes={"/data": data})
def write(path, text, barrier=None):
    if barrier:  # both callers here at once: two containers, committing together
        flags = burst.Dict.from_name("vt-barrier", create_if_missing=True)
        flags[path] = True
        deadline = time.time() + 60
        while not all(flags.get(p) for p in barrier) and time.time() < deadline:
            time.sleep(0.05)
    full = os.path.join("/data", path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    data.commit()
    return os.environ["BURST_CONTAINER_ID"]


@app.function(volumes={"/data": data}, scaledown_window=1)
def write_no_commit(path, text):
    os.makedirs("/data/exit", exist_ok=True)
    with open(os.path.join("/data", path), "w") as f:
        f.write(text)


@app.function(volumes={"/data": data})
def read(path):
    data.reload()
    try:
        with open(os.path.join("/data", path)) as f:
            return f.read()
    except FileNotFoundError:
        return None


@app.function(volumes={"/data": data})
def reload_with_open_file(path):
    with open(os.path.join("/data", path)) as f:
        try:
            data.reload()
        except RuntimeError as e:
            return str(e)
    return "no error"


@app.function(volumes={"/data": data})
def sdk_ops():
    out = {"ls": sorted(e.path for e in data.listdir("/", recursive=True))}
    out["read"] = b"".join(data.read_file("notes/a.txt")).decode()
    with data.batch_upload(force=True) as b:
        b.put_file(__import__("io").BytesIO(b"from a container"), "up/c.txt")
    data.copy_files(["notes/a.txt"], "copied/")
    return out


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


@app.function(volumes={"/big": big.read_only()}, memory=256)
def digest(path):
    return _digest(os.path.join("/big", path))


@app.function(volumes={"/big": big.read_only()}, memory=256)
def digest_again(path):
    return _digest(os.path.join("/big", path))


@app.function(volumes={"/big": big.read_only()})
def write_read_only():
    try:
        open("/big/nope", "w")
        code = 0
    except OSError as e:
        code = e.errno
    try:
        big.remove_file("weights/big.bin")
        refused = ""
    except burst.exception.InvalidError as e:
        refused = str(e)
    return code, refused
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, BURST_VOLUME_MAX_BYTES=str(LIMIT),
                               BURST_VOLUME_CHUNK_GRACE="0")


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    c = Client(cluster.profile["url"], cluster.profile["token"])
    sdk_volume._clients[:] = [c]
    yield c
    sdk_volume._clients[:] = []


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vol-app")
    (d / "vol_app.py").write_text(textwrap.dedent(APP))
    # An unknown volume (without create_if_missing) fails the deploy, naming it.
    proc = subprocess.run([BURST, "deploy", "vol_app.py"], cwd=d, text=True,
                          capture_output=True, timeout=120, env=cluster.env)
    assert proc.returncode != 0 and "volume 'vt-big' not found" in proc.stderr, proc.stderr
    cluster.burst("volume", "create", "vt-big", check=True)
    proc = subprocess.run([BURST, "deploy", "vol_app.py"], cwd=d, text=True,
                          capture_output=True, timeout=120, env=cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d


def fn(client: Client, name: str) -> burst.Function:  # type: ignore[type-arg]
    return burst.Function.from_name("vol-app", name, client=client)


def test_commit_in_one_container_reload_in_another(client: Client, deployed: Path) -> None:
    assert fn(client, "read").remote("notes/a.txt") is None  # its container is warm now
    fn(client, "write").remote("notes/a.txt", "hello")
    assert fn(client, "read").remote("notes/a.txt") == "hello"  # after its reload()
    fn(client, "write").remote("notes/a.txt", "again")  # the same file: the last wins
    assert fn(client, "read").remote("notes/a.txt") == "again"
    vol = burst.Volume.from_name("vt-data")
    assert b"".join(vol.read_file("notes/a.txt")) == b"again"
    msg = fn(client, "reload_with_open_file").remote("notes/a.txt")
    assert msg.startswith("there are open files preventing the operation"), msg


def test_a_clean_exit_commits(client: Client, deployed: Path) -> None:
    fn(client, "write_no_commit").remote("exit/z.txt", "bye")
    vol = burst.Volume.from_name("vt-data")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the container stops after 1 s idle
        try:
            if b"".join(vol.read_file("exit/z.txt")) == b"bye":
                return
        except NotFoundError:
            pass
        time.sleep(0.2)
    raise AssertionError("the container's write was not committed when it exited")


def test_concurrent_commits_of_different_files_both_land(client: Client,
                                                         deployed: Path) -> None:
    paths = ["con/x.txt", "con/y.txt"]
    calls = [fn(client, "write").spawn(p, p.upper(), paths) for p in paths]
    containers = [c.get(timeout=90) for c in calls]
    assert containers[0] != containers[1]  # two containers, each committing its file
    vol = burst.Volume.from_name("vt-data")
    listed = {e.path: e.size for e in vol.listdir("con")}
    assert listed == {"con/x.txt": 9, "con/y.txt": 9}
    assert fn(client, "read").remote("con/y.txt") == "CON/Y.TXT"


def test_file_operations_from_client_and_container(cluster: Cluster, client: Client,
                                                   deployed: Path, tmp_path: Path) -> None:
    vol = burst.Volume.from_name("vt-data")
    out = fn(client, "sdk_ops").remote()
    assert "notes/a.txt" in out["ls"] and "notes" in out["ls"] and out["read"] == "again"
    assert b"".join(vol.read_file("up/c.txt")) == b"from a container"
    assert b"".join(vol.read_file("copied/a.txt")) == b"again"
    # batch_upload without force refuses to replace; an upload that fails part way
    # leaves the volume as it was.
    with pytest.raises(ConflictError, match="already has 'up/c.txt'"):
        with vol.batch_upload() as b:
            b.put_file(io.BytesIO(b"other"), "up/c.txt")
    before = vol.info().version
    with pytest.raises(RuntimeError, match="interrupted"):
        with vol.batch_upload() as b:
            b.put_file(io.BytesIO(b"half"), "half.txt")
            raise RuntimeError("interrupted")
    assert vol.info().version == before
    # A commit naming chunks never uploaded is refused, naming why.
    with pytest.raises(InvalidError, match="never uploaded"):
        vol._op("commit", changes={"ghost.bin": wire.VolumeFile(size=1, sha256="0" * 64)})
    vol.remove_file("copied", recursive=True)
    with pytest.raises(InvalidError, match="is a directory"):
        vol.remove_file("up")
    assert not any(e.path.startswith("copied") for e in vol.listdir("/", recursive=True))
    # Replaced and removed files' chunks are deleted (no grace in this cluster): the
    # store holds the chunks the tree names, and the refused upload's one.
    live, named = asyncio.run(_chunks(cluster, "vt-data"))
    refused = hashlib.sha256(b"other").hexdigest()
    assert live == named | {refused}, (sorted(live - named), sorted(named - live))
    assert len(named) >= 4
    # Path escapes and unknown volumes are named.
    with pytest.raises(InvalidError, match="escapes the volume"):
        list(vol.read_file("../etc/passwd"))
    with pytest.raises(NotFoundError, match="volume 'no-such-vol' not found"):
        burst.Volume.from_name("no-such-vol").listdir("/")
    # The CLI: put, ls, get, cp, rm, list (with sizes), delete.
    local = tmp_path / "hello.txt"
    local.write_text("cli bytes")
    cluster.burst("volume", "create", "vt-cli", check=True)
    cluster.burst("volume", "put", "vt-cli", str(local), "/docs/", check=True)
    ls = json.loads(cluster.burst("volume", "ls", "vt-cli", "docs", "--json",
                                  check=True).stdout)
    assert ls == [{"path": "docs/hello.txt", "type": "file", "size": 9,
                   "mtime": ls[0]["mtime"]}]
    cluster.burst("volume", "cp", "vt-cli", "docs/hello.txt", "docs/copy.txt", check=True)
    got = tmp_path / "got.txt"
    cluster.burst("volume", "get", "vt-cli", "docs/copy.txt", str(got), check=True)
    assert got.read_text() == "cli bytes"
    cluster.burst("volume", "rm", "vt-cli", "docs/hello.txt", check=True)
    table = cluster.burst("volume", "list", check=True).stdout
    assert "vt-cli" in table and "9 B" in table
    cluster.burst("volume", "delete", "vt-cli", check=True)
    proc = cluster.burst("volume", "ls", "vt-cli")
    assert proc.returncode != 0 and "volume 'vt-cli' not found" in proc.stderr


async def _volume_store(cluster: Cluster, name: str) -> tuple[str, int]:
    """The volume's object store stream and how many messages it holds."""
    nc = await nats.connect(_nats_url(cluster))
    try:
        js = nc.jetstream()
        kv = await js.key_value("burst_volumes")
        rec = msgspec.msgpack.decode((await kv.get(f"default.{name}")).value)
        stream = f"OBJ_burst_vol_{rec['volume_id']}"
        info = await js.stream_info(stream)
        return stream, info.state.messages
    finally:
        await nc.close()


async def _chunks(cluster: Cluster, name: str) -> tuple[set[str], set[str]]:
    """The chunks the volume's store holds, and those its tree names."""
    nc = await nats.connect(_nats_url(cluster))
    try:
        js = nc.jetstream()
        raw = (await (await js.key_value("burst_volumes")).get(f"default.{name}")).value
        rec = msgspec.msgpack.decode(raw)
        named = {c for f in rec["files"].values() for c in (f.get("chunks") or [f["sha256"]])}
        st = await js.object_store(f"burst_vol_{rec['volume_id']}")
        live = {o.name for o in await st.list(ignore_deletes=True)}
        return live, named
    finally:
        await nc.close()


async def _purge(cluster: Cluster, stream: str) -> None:
    nc = await nats.connect(_nats_url(cluster))
    try:
        await nc.jetstream().purge_stream(stream)
    finally:
        await nc.close()


def test_one_gib_file_streams_through_a_256_mib_container(cluster: Cluster, client: Client,
                                                          deployed: Path,
                                                          tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with big.open("wb") as f:
        for i in range(BIG >> 20):
            piece = block[:-4] + i.to_bytes(4, "big")
            f.write(piece)
            h.update(piece)
    vol = burst.Volume.from_name("vt-big")
    t0 = time.monotonic()
    with vol.batch_upload() as b:
        b.put_file(big, "weights/big.bin")
    upload_s = time.monotonic() - t0
    assert vol.listdir("weights")[0].size == BIG
    t0 = time.monotonic()
    assert fn(client, "digest").remote("weights/big.bin") == h.hexdigest()
    cold_s = time.monotonic() - t0
    # Over the volume's limit: a copy would hold two of the file.
    with pytest.raises(ResourceExhaustedError, match="above its limit"):
        vol.copy_files(["weights/big.bin"], "weights/twice.bin")
    # The agent's cache serves the next container: with every chunk gone from the
    # store, a fresh container still reads the whole file.
    stream, messages = asyncio.run(_volume_store(cluster, "vt-big"))
    assert messages > 0
    asyncio.run(_purge(cluster, stream))
    assert asyncio.run(_volume_store(cluster, "vt-big"))[1] == 0
    t0 = time.monotonic()
    assert fn(client, "digest_again").remote("weights/big.bin") == h.hexdigest()
    warm_s = time.monotonic() - t0
    import errno
    code, refused = fn(client, "write_read_only").remote()
    assert code in (errno.EROFS, errno.EACCES)
    assert "mounted read-only in this container" in refused
    print(f"\n1 GiB: upload {upload_s:.1f} s, cold read call {cold_s:.1f} s, "
          f"warm read call {warm_s:.1f} s")
    # Deleting the volume deletes its store (frees the space).
    burst.Volume.delete("vt-big")
    with pytest.raises(Exception, match="not found"):
        asyncio.run(_volume_store(cluster, "vt-big"))


def test_other_workspace_gets_404(cluster: Cluster, client: Client, deployed: Path,
                                  tmp_path: Path) -> None:
    cluster.burst("workspace", "create", "vol-other", check=True)
    token = cluster.burst("token", "create", "--workspace", "vol-other", check=True
                          ).stdout.strip()
    for op in ("info", "listdir", "delete", "entry"):
        body = wire.encode(wire.VolumeRequest(op=op, name="vt-data", path="notes/a.txt"))
        status, raw = http_call(cluster, "POST", "/v1/volumes", token, body, wire.MSGPACK)
        assert status == 404, (op, status, raw)
    # A body past the gateway's limit is refused before it is read (files go in chunks).
    url = urllib.parse.urlsplit(cluster.profile["url"])
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    conn.putrequest("POST", "/v1/volumes")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(9 << 20))
    conn.endheaders()  # (the body is never sent: the answer comes first)
    resp = conn.getresponse()
    assert resp.status == 413 and b"exceeds the" in resp.read()
    conn.close()
    body = wire.encode(wire.VolumeRequest(op="list"))
    status, raw = http_call(cluster, "POST", "/v1/volumes", token, body, wire.MSGPACK)
    assert status == 200 and wire.volume_response_decoder.decode(raw).volumes == []
    app = tmp_path / "other_vol_app.py"
    app.write_text(textwrap.dedent('''
        import burst
        app = burst.App("other-vol-app")

        @app.function(volumes={"/data": burst.Volume.from_name("vt-data")})
        def f():
            return 1
    '''))
    proc = subprocess.run([BURST, "deploy", str(app)], text=True, capture_output=True,
                          timeout=120, env={**cluster.env, **as_workspace(cluster, token)})
    assert proc.returncode != 0
    assert "volume 'vt-data' not found in workspace 'vol-other'" in proc.stderr, proc.stderr
