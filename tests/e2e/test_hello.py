"""The walking skeleton end to end: `burst up`, `burst run examples/hello.py`, and the
call path's promises (errors, output, scale to zero, light imports, hashed tokens)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Cluster

pytestmark = pytest.mark.e2e


def write_app(tmp_path: Path, body: str, name: str = "app_under_test.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_hello_example(cluster: Cluster) -> None:
    proc = cluster.burst("run", "examples/hello.py", check=True)
    out = proc.stdout
    assert "local: 9" in out
    assert "remote: 16" in out
    assert "loop of remote calls: [0, 1, 4, 9, 16]" in out
    # Remote prints come back tagged with the function's name, before the result line.
    lines = out.splitlines()
    tagged = [ln for ln in lines if ln.startswith("[square] squaring 4 in process ")]
    assert tagged, out
    assert lines.index(tagged[0]) < lines.index("remote: 16")
    # The entrypoint's own output passes through untagged, as whole lines.
    assert "local: 9" in lines


def test_remote_exception_keeps_class_message_and_traceback(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import burst

        app = burst.App("errors")

        class Oops(ValueError):
            pass

        @app.function()
        def fail(x):
            raise Oops(f"bad value {x}")

        @app.local_entrypoint()
        def main():
            try:
                fail.remote(7)
            except Oops as e:
                print("caught", type(e).__name__, str(e))
                print("remote traceback attached:", any("in fail" in n for n in e.__notes__))
    """)
    proc = cluster.burst("run", str(app), check=True)
    assert "caught Oops bad value 7" in proc.stdout
    assert "remote traceback attached: True" in proc.stdout


def test_unpicklable_exception_becomes_remote_error(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import burst

        app = burst.App("errors2")

        class Weird(Exception):
            def __init__(self, a, b):  # cannot be rebuilt from its args
                super().__init__(f"{a}/{b}")

        @app.function()
        def fail():
            raise Weird(1, 2)

        @app.local_entrypoint()
        def main():
            try:
                fail.remote()
            except burst.exception.RemoteError as e:
                print("remote error:", e)
    """)
    proc = cluster.burst("run", str(app), check=True)
    assert "remote error: app_under_test.Weird: 1/2" in proc.stdout


def test_entrypoint_failure_exits_nonzero(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import burst

        app = burst.App("failing")

        @app.function()
        def f():
            return 1

        @app.local_entrypoint()
        def main():
            raise RuntimeError("entrypoint broke")
    """)
    proc = cluster.burst("run", str(app))
    assert proc.returncode != 0
    assert "entrypoint broke" in proc.stderr


def test_file_without_app_is_a_clear_error(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, "x = 1\n")
    proc = cluster.burst("run", str(app))
    assert proc.returncode != 0
    assert "defines no burst.App" in proc.stderr
    assert "Traceback" not in proc.stderr


def _host_pids(container_id: str) -> list[int]:
    """Live host processes of a container, whatever pid namespace it sees from inside:
    the members of its cgroup (the sandbox makes one per container), and processes with
    its id in their environment (an unsandboxed container)."""
    import glob

    candidates: set[int] = set()
    for procs in glob.glob(f"/sys/fs/cgroup/memory/**/{container_id}/cgroup.procs",
                           recursive=True):
        try:
            candidates.update(int(p) for p in Path(procs).read_text().split())
        except OSError:
            continue
    needle = f"BURST_CONTAINER_ID={container_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    candidates.add(int(entry))
        except OSError:
            continue
    pids = []
    for pid in sorted(candidates):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].split()[0] == "Z":
                    continue  # a zombie is gone for every purpose but the process table
        except OSError:
            continue
        pids.append(pid)
    return pids


def test_scale_to_zero_and_back(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import os, time, json
        import burst

        app = burst.App("scaling")

        @app.function(scaledown_window=1)
        def container():
            return os.environ["BURST_CONTAINER_ID"]

        @app.local_entrypoint()
        def main():
            first = container.remote()
            again = container.remote()
            last_call = time.time()
            print(json.dumps({"first": first, "again": again, "last_call": last_call}))
    """)
    proc = cluster.burst("run", str(app), check=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["first"] == info["again"]  # warm: the same container served both calls
    # The container's processes are gone within 3 s of the last call (window 1 s).
    deadline = info["last_call"] + 3.0
    while _host_pids(info["first"]) and time.time() < deadline:
        time.sleep(0.05)
    assert not _host_pids(info["first"]), "container still running 3 s after the last call"
    # ... and the next call runs in a new container.
    proc2 = cluster.burst("run", str(app), check=True)
    info2 = json.loads(proc2.stdout.strip().splitlines()[-1])
    assert info2["first"] != info["first"]


def test_container_processes_are_visible_on_the_host(cluster: Cluster, tmp_path: Path) -> None:
    """The check above can fail: while a container lives, its processes are found."""
    app = write_app(tmp_path, """
        import os, time
        import burst

        app = burst.App("visible")

        @app.function(scaledown_window=30)
        def container():
            return os.environ["BURST_CONTAINER_ID"]

        @app.local_entrypoint()
        def main():
            cid = container.remote()
            print(cid, flush=True)
            time.sleep(3)
    """, "visible_app.py")
    import subprocess
    import sys as _sys

    env = cluster.env
    p = subprocess.Popen([str(Path(_sys.executable).parent / "burst"), "run", str(app)],
                         env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        cid = p.stdout.readline().strip()
        assert cid.startswith("ct-")
        assert _host_pids(cid), "a live container's processes were not found on the host"
    finally:
        p.wait(60)


HEAVY = ("typer", "rich", "fastapi", "uvicorn", "nats", "starlette", "pydantic", "redis",
         "structlog", "httpx")


def test_import_burst_and_the_shim_stay_light(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, f"""
        import sys, json
        import burst

        app = burst.App("light")
        HEAVY = {HEAVY!r}

        def heavy_loaded():
            return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)

        @app.function()
        def inside():
            return heavy_loaded()

        @app.local_entrypoint()
        def main():
            print(json.dumps({{"container": inside.remote()}}))
    """)
    proc = cluster.burst("run", str(app), check=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["container"] == []
    # In a plain interpreter, `import burst` loads none of them either.
    import subprocess
    import sys

    code = ("import sys, burst; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _http(cluster: Cluster, method: str, path: str, token: str | None = None,
          body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(cluster.profile["url"] + path, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_bad_requests_get_clear_json_errors(cluster: Cluster) -> None:
    token = cluster.profile["token"]
    status, body = _http(cluster, "GET", "/v1/status")
    assert status == 401 and body["error"]["type"] == "Unauthenticated"
    assert "missing token" in body["error"]["message"]
    status, body = _http(cluster, "GET", "/v1/status", token="bst_wrong")
    assert status == 401 and "invalid token" in body["error"]["message"]
    status, body = _http(cluster, "POST", "/v1/apps/nope/functions/f/calls", token=token,
                         body=b"\x81", ctype="application/vnd.burst+msgpack")
    assert status == 404 and "app 'nope' is not deployed" in body["error"]["message"]
    status, body = _http(cluster, "POST", "/v1/apps", token=token, body=b"\xc1garbage",
                         ctype="application/vnd.burst+msgpack")
    assert status == 400 and body["error"]["type"] == "InvalidInput"
    status, body = _http(cluster, "POST", "/v1/tokens", token=token, body=b"{not json",
                         ctype="application/json")
    assert status == 400 and body["error"]["type"] == "InvalidInput"
    status, body = _http(cluster, "POST", "/v1/tokens", token=token,
                         body=json.dumps({"workspace": "Bad Name"}).encode(),
                         ctype="application/json")
    assert status == 400 and "'Bad Name'" in body["error"]["message"]
    # The service survived all of it.
    status, body = _http(cluster, "GET", "/healthz")
    assert status == 200 and body["ok"] is True


def test_tokens_are_stored_hashed(cluster: Cluster) -> None:
    cluster.burst("workspace", "create", "team-b", check=True)
    proc = cluster.burst("token", "create", "--workspace", "team-b", check=True)
    new_token = proc.stdout.strip()
    assert new_token.startswith("bst_")
    admin_token = cluster.profile["token"]
    nats_url = cluster.env.get("BURST_NATS_URL") or _nats_url(cluster)

    async def raw_entries() -> dict[str, bytes]:
        import nats

        nc = await nats.connect(nats_url)
        kv = await nc.jetstream().key_value("burst_tokens")
        out = {k: (await kv.get(k)).value for k in await kv.keys()}
        await nc.close()
        return out

    entries = asyncio.run(raw_entries())
    for token in (new_token, admin_token):
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert digest in entries
        for key, value in entries.items():
            assert token not in key and token.encode() not in value
    assert b"team-b" in entries[hashlib.sha256(new_token.encode()).hexdigest()]
    # The new token works, for its own workspace (and not for the cluster-wide status).
    status, body = _http(cluster, "GET", "/v1/apps", token=new_token)
    assert status == 200 and body == {"apps": []}
    status, body = _http(cluster, "GET", "/v1/status", token=new_token)
    assert status == 403 and "workspace 'team-b'" in body["error"]["message"]


def _nats_url(cluster: Cluster) -> str:
    state = json.loads((cluster.home / "cluster.json").read_text())
    ports = state.get("ports") or {}
    if "nats" in ports:
        return f"nats://127.0.0.1:{ports['nats']}"
    for part in state.get("parts", []):
        if part.get("name") == "nats":
            return f"nats://127.0.0.1:{part['ports']['client']}"
    raise AssertionError(f"no nats port in cluster.json: {state}")


def test_examples_directory_is_what_the_readme_runs() -> None:
    assert (REPO / "examples" / "hello.py").exists()


def test_billing_report_counts_container_seconds(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import time
        import burst

        app = burst.App("metered")

        @app.function(scaledown_window=1)
        def work():
            time.sleep(1.5)
            return "done"

        @app.local_entrypoint()
        def main():
            print(work.remote())
    """)
    cluster.burst("run", str(app), check=True)
    # The container lives at least through the 1.5 s call (it stops when the ephemeral app
    # is removed at the end of `burst run`); billing folds its records shortly after.
    deadline = time.time() + 20
    rows: list[dict] = []
    while time.time() < deadline:
        proc = cluster.burst("billing", "report", "--by", "function", "--format", "json",
                             check=True)
        data = json.loads(proc.stdout)
        rows = [r for r in data["rows"] if r["function"] == "work"]
        if rows and rows[0]["seconds"] >= 1.5:
            break
        time.sleep(0.5)
    assert rows, "no ledger line for the metered function"
    assert 1.5 <= rows[0]["seconds"] <= 10, rows
    assert rows[0]["cost"] > 0
    # A run is metered under its app's name, marked as ephemeral usage.
    assert rows[0]["app"] == "metered"
    assert rows[0]["ephemeral_seconds"] == rows[0]["seconds"]
    assert rows[0]["ephemeral_cost"] == rows[0]["cost"]
    table = cluster.burst("billing", "report", check=True).stdout
    assert "metered (ephemeral)" in table and "total" in table


def test_failure_paths_reach_the_caller(cluster: Cluster, tmp_path: Path) -> None:
    """A container that dies mid-call, a call past its timeout, and code that cannot even
    start in the container: each caller gets one clear error, nobody hangs."""
    app = write_app(tmp_path, """
        import os, time, json
        import burst

        app = burst.App("failures")

        @app.function()
        def crash():
            os._exit(3)

        @app.function(timeout=1)
        def slow():
            time.sleep(30)

        @app.function()
        def fine():
            return "still fine"

        @app.local_entrypoint()
        def main():
            out = {}
            try:
                crash.remote()
            except burst.exception.ExecutionError as e:
                out["crash"] = str(e)
            t0 = time.time()
            try:
                slow.remote()
            except burst.exception.FunctionTimeoutError as e:
                out["timeout"] = str(e)
                out["timeout_is_TimeoutError"] = isinstance(e, TimeoutError)
            out["timeout_after"] = time.time() - t0
            out["fine"] = fine.remote()
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=60)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "exited with code 3" in out["crash"]
    assert "timed out after 1 s" in out["timeout"] and out["timeout_is_TimeoutError"]
    assert out["timeout_after"] < 10
    assert out["fine"] == "still fine"


def test_code_that_cannot_start_in_the_container_fails_the_call(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import os
        import burst

        if os.environ.get("BURST_CONTAINER_ID"):
            raise RuntimeError("broken only inside the container")

        app = burst.App("nostart")

        @app.function()
        def f():
            return 1

        @app.local_entrypoint()
        def main():
            try:
                f.remote()
            except burst.exception.ExecutionError as e:
                print("failed to start:", e)
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=60)
    assert "failed to start: container failed to start" in proc.stdout
    assert "broken only inside the container" in proc.stdout


def test_containers_that_keep_failing_to_start_fail_the_waiting_call(cluster: Cluster,
                                                                     tmp_path: Path) -> None:
    """A platform fault at start (here the app's bundle is corrupt in the store, so no
    agent can unpack it) is retried with backoff, and after
    BURST_START_FAILURES_TO_FAIL_CALLS failed starts in a row (3) the waiting call fails
    with the start error instead of waiting for minutes."""
    import subprocess
    import sys

    import msgspec
    import nats

    app = write_app(tmp_path, """
        import burst

        app = burst.App("badbundle")

        @app.function()
        def f():
            return "ran"
    """)
    cluster.burst("deploy", str(app), check=True)

    async def corrupt() -> None:
        nc = await nats.connect(_nats_url(cluster))
        js = nc.jetstream()
        record = msgspec.msgpack.decode(
            (await (await js.key_value("burst_deployments")).get("default.badbundle")).value)
        bundles = await js.object_store("burst_bundles")
        await bundles.put(f"default/{record['bundle_hash']}", b"not a bundle")
        await nc.close()

    asyncio.run(corrupt())
    code = ("import burst, time\n"
            "t0 = time.time()\n"
            "try:\n"
            "    print(burst.Function.from_name('badbundle', 'f').remote())\n"
            "except burst.exception.ExecutionError as e:\n"
            "    print(f'after {time.time() - t0:.1f} s:', e)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=cluster.env,
                              capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the call still waits on containers that cannot start") from e
    assert "container failed to start" in proc.stdout and "corrupt" in proc.stdout, (
        proc.stdout, proc.stderr)
    # Not the first failed start: a transient fault is retried.
    assert cluster.log("agent").count("corrupt") >= 3, cluster.log("agent")[-3000:]
