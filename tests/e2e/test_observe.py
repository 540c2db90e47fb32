"""Issue 20's logs, containers and metrics on one cluster: `burst app logs` (search,
follow, platform events, bounded reads), `burst container list/exec/stop`, `burst shell`, `/metrics`
(parsed with prometheus-client), and what another workspace's token sees of them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_hello import _nats_url, write_app

pytestmark = pytest.mark.e2e

APP = "observed"
#: A read of the logs may scan this many lines at most (the bounded-work test crosses it).
SCAN_MAX = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, BURST_METRICS_INTERVAL="0.3",
                               BURST_LOG_SCAN_MAX=str(SCAN_MAX))


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = write_app(tmp_path_factory.mktemp("observed"), f"""
        import os
        import time
        import burst

        app = burst.App({APP!r})

        @app.function(scaledown_window=60)
        def hello(word: str) -> str:
            print(f"said {{word}}")
            return word

        @app.function(scaledown_window=60)
        def slow(marker: str, seconds: float) -> str:
            print(f"started {{marker}}", flush=True)
            time.sleep(seconds)
            return marker

        @app.function(timeout=1)
        def overdue() -> None:
            time.sleep(30)

        @app.function(memory=128)
        def hog() -> None:
            chunks = []
            while True:
                chunks.append(bytearray(16 << 20))

        @app.function(secrets=[burst.Secret.from_dict({{"SHELL_SECRET": "s3cret"}})])
        def with_secret() -> str:
            return "unused"

        @app.function(max_containers=1, scaledown_window=60)
        def tool() -> str:
            return os.environ["BURST_CONTAINER_ID"]

        @app.function(scaledown_window=60)
        @burst.fastapi_endpoint()
        def page(x: int) -> dict:
            if x < 0:
                raise ValueError("negative")
            return {{"x": x}}

        @app.function()
        def chatty(n: int) -> int:
            for i in range(n):
                print(f"chatter {{i}}")
            return n
    """, "observed_app.py")
    cluster.burst("deploy", str(app), check=True)
    return app


def python(cluster: Cluster, code: str, env: dict[str, str] | None = None,
           timeout: float = 90) -> str:
    out = subprocess.run([sys.executable, "-c", code], env={**cluster.env, **(env or {})},
                         text=True, capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def call(cluster: Cluster, fn: str, *args: Any) -> str:
    return python(cluster, "import burst\n"
                  f"print(burst.Function.from_name({APP!r}, {fn!r}).remote(*{args!r}))\n")


def logs(cluster: Cluster, *args: str, env: dict[str, str] | None = None,
         ) -> list[dict[str, Any]]:
    proc = subprocess.run([BURST, "app", "logs", *args, "--json"], cwd=REPO, text=True,
                          env={**cluster.env, **(env or {})}, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def http(cluster: Cluster, path: str, token: str | None = None, method: str = "GET",
         body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        cluster.profile["url"] + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token or cluster.profile['token']}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_print_is_in_the_logs_and_found_by_search(cluster: Cluster, deployed: Path) -> None:
    word = "w" + uuid.uuid4().hex[:10]
    assert call(cluster, "hello", word).strip() == word
    lines = until("the printed line", lambda: [
        e for e in logs(cluster, APP, "--since", "10m") if e["line"] == f"said {word}"])
    line = lines[0]
    assert line["function"] == "hello" and line["stream"] == "stdout" and not line["event"]
    assert line["call_id"].startswith("fc-") and line["container_id"].startswith("ct-")
    assert abs(line["at"] - time.time()) < 120
    # Platform events of the app sit beside it: its container started, and was ready.
    events = {e["event"] for e in logs(cluster, APP, "--function", "hello")}
    assert {"container.started", "container.ready"} <= events
    # The search finds that line only (case-insensitive), and nothing for other text.
    found = logs(cluster, APP, "--search", word.upper())
    assert [e["line"] for e in found] == [f"said {word}"]
    assert logs(cluster, APP, "--search", "no-such-text-" + word) == []
    # By call and by container: the same line.
    assert [e["line"] for e in logs(cluster, APP, "--call", line["call_id"])
            if not e["event"]] == [f"said {word}"]
    by_container = subprocess.run([BURST, "container", "logs", line["container_id"], "--json"],
                                  env=cluster.env, text=True, capture_output=True, timeout=60)
    assert f"said {word}" in by_container.stdout, by_container.stderr
    # The text form has a timestamp, the function, container and call.
    text = cluster.burst("app", "logs", APP, "--search", word, check=True).stdout
    assert f"hello {line['container_id']} {line['call_id']} said {word}" in text


def test_follow_streams_a_line_while_the_call_runs(cluster: Cluster, deployed: Path) -> None:
    marker = "m" + uuid.uuid4().hex[:10]
    follower = subprocess.Popen([BURST, "app", "logs", APP, "--follow", "--since", "5s",
                                 "--search", marker, "--json"], env=cluster.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        call_id = python(cluster, "import burst\n"
                         f"c = burst.Function.from_name({APP!r}, 'slow').spawn({marker!r}, 30)\n"
                         "print(c.object_id)\n").strip()
        assert follower.stdout is not None
        line = json.loads(follower.stdout.readline())  # blocks until the line streams
        assert line["line"] == f"started {marker}" and line["call_id"] == call_id
        # ... while the call still runs.
        status = json.loads(cluster.burst("app", "status", APP, "--json", check=True).stdout)
        assert {f["function"]: f for f in status["functions"]}["slow"]["containers"].get("busy")
    finally:
        follower.kill()
        follower.wait()
        python(cluster, f"import burst\nburst.FunctionCall.from_id({call_id!r}).cancel()\n")


def test_an_out_of_memory_kill_is_an_event(cluster: Cluster, deployed: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import burst\n"
                          f"burst.Function.from_name({APP!r}, 'hog').remote()\n"],
                         env=cluster.env, text=True, capture_output=True, timeout=90)
    assert out.returncode != 0 and "out of memory" in out.stderr, out.stderr[-500:]
    events = until("the OOM event", lambda: [
        e for e in logs(cluster, APP, "--function", "hog") if e["event"] == "container.oom"])
    assert "out of memory (limit 128 MiB)" in events[0]["line"]
    stopped = [e for e in logs(cluster, APP, "--function", "hog")
               if e["event"] == "container.stopped"]
    assert stopped and "stopped: oom" in stopped[0]["line"]


def test_a_timeout_is_an_event_of_its_call(cluster: Cluster, deployed: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import burst\n"
                          f"c = burst.Function.from_name({APP!r}, 'overdue').spawn()\n"
                          "print(c.object_id)\n"
                          "c.get(timeout=60)\n"],
                         env=cluster.env, text=True, capture_output=True, timeout=90)
    assert out.returncode != 0 and "FunctionTimeoutError" in out.stderr, out.stderr[-500:]
    call_id = out.stdout.split()[0]
    events = until("the timeout event", lambda: [
        e for e in logs(cluster, APP, "--call", call_id) if e["event"] == "call.timeout"])
    assert events[0]["line"] == f"call {call_id} timed out after 1 s"
    assert any(e["event"] == "container.stopped" and "stopped: timeout" in e["line"]
               for e in logs(cluster, APP, "--function", "overdue"))


def _container(cluster: Cluster, fn: str) -> str:
    call(cluster, fn, *(("x",) if fn == "hello" else ()))
    data = json.loads(cluster.burst("container", "list", "--app", APP, "--json",
                                    check=True).stdout)
    mine = [c for c in data["containers"] if c["function"] == fn and c["state"] == "idle"]
    assert mine, data
    c = mine[0]
    assert c["app"] == APP and c["agent_id"] and c["inputs_served"] >= 1 and c["age"] >= 0
    return str(c["container_id"])


def test_container_exec_runs_inside_and_returns_the_exit_code(
        cluster: Cluster, deployed: Path) -> None:
    cid = _container(cluster, "hello")
    ok = cluster.burst("container", "exec", cid, "--", "echo", "hello from inside")
    assert ok.returncode == 0 and ok.stdout == "hello from inside\n", ok.stderr
    # Inside: the container's working directory and uid, not the host's; stderr apart.
    where = cluster.burst("container", "exec", cid, "--", "sh", "-c",
                          "pwd; id -u; echo oops >&2; exit 7")
    assert where.returncode == 7, where.stderr
    assert where.stdout.split() == ["/run/burst/bundle", "65534"]
    assert "oops" in where.stderr
    # A stopped container: a clear error, exit status 1.
    cluster.burst("container", "stop", cid, check=True)
    until("the container to stop", lambda: cid not in cluster.burst(
        "container", "list", "--json", check=True).stdout)
    gone = cluster.burst("container", "exec", cid, "--", "echo", "hi")
    assert gone.returncode == 1 and f"container {cid!r} is not running" in gone.stderr


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _calls_of(samples: dict[Any, float], fn: str) -> float:
    key = ("burst_function_calls_total", tuple(sorted(
        {"workspace": "default", "app": APP, "function": fn, "status": "success"}.items())))
    return samples.get(key, 0.0)


def test_metrics_parse_and_move_with_calls(cluster: Cluster, deployed: Path) -> None:
    status, body = http(cluster, "/metrics")
    assert status == 200
    before = _samples(body.decode())
    for i in range(3):
        call(cluster, "hello", f"m{i}")
    after = until("the calls counted in /metrics", lambda: (
        s if _calls_of(s := _samples(http(cluster, "/metrics")[1].decode()), "hello")
        >= _calls_of(before, "hello") + 3 else None))
    fn = tuple(sorted({"workspace": "default", "app": APP, "function": "hello"}.items()))
    assert after[("burst_function_latency_seconds_count", fn)] >= 3
    assert after[("burst_function_queue_seconds_count", fn)] >= 3
    assert after[("burst_function_cold_starts_total", fn)] >= 1
    assert after[("burst_function_cold_start_seconds_count", fn)] >= 1
    # The operator sees the machines and every service.
    names = {name for name, _ in after}
    assert {"burst_agent_cpu_percent", "burst_agent_memory_used_bytes",
            "burst_service_up"} <= names
    services = {dict(labels)["service"] for name, labels in after if name == "burst_service_up"}
    assert services == {"gateway", "scheduler", "billing", "agent"}
    assert not any("call" in k for _, labels in after for k, _ in labels)  # bounded labels


def test_web_requests_count_as_calls_of_their_function(
        cluster: Cluster, deployed: Path) -> None:
    state = json.loads((cluster.home / "cluster.json").read_text())
    port = next(p for p in state["parts"] if p["name"] == "gateway")["ports"]["web"]
    before = _samples(http(cluster, "/metrics")[1].decode())
    fn = tuple(sorted({"workspace": "default", "app": APP, "function": "page"}.items()))
    for i in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/default/{APP}/page?x={i}",
                                    timeout=60) as resp:
            assert json.loads(resp.read()) == {"x": i}
    with pytest.raises(urllib.error.HTTPError) as failed:  # the function raised: a 500
        urllib.request.urlopen(f"http://127.0.0.1:{port}/default/{APP}/page?x=-1", timeout=60)
    assert failed.value.code == 500
    failures = ("burst_function_calls_total", tuple(sorted(
        {"workspace": "default", "app": APP, "function": "page", "status": "failure"}.items())))
    after = until("the web requests counted in /metrics", lambda: (
        s if _calls_of(s := _samples(http(cluster, "/metrics")[1].decode()), "page")
        >= _calls_of(before, "page") + 3
        and s.get(failures, 0.0) >= before.get(failures, 0.0) + 1 else None))
    # In the function's latency and queue-time histograms too ...
    assert after[("burst_function_latency_seconds_count", fn)] >= \
        before.get(("burst_function_latency_seconds_count", fn), 0.0) + 4
    assert after[("burst_function_queue_seconds_count", fn)] >= \
        before.get(("burst_function_queue_seconds_count", fn), 0.0) + 4
    # ... with the function's labels only: no request, call or container id.
    labels = {k for name, ls in after if "function" in dict(ls) and dict(ls)["function"] ==
              "page" for k, _ in ls}
    assert labels <= {"workspace", "app", "function", "status", "le", "state"}, labels


def test_a_window_too_large_to_scan_is_refused(cluster: Cluster, deployed: Path) -> None:
    assert call(cluster, "chatty", SCAN_MAX + 50).strip() == str(SCAN_MAX + 50)
    proc = until("the read refused", lambda: (p if (p := cluster.burst(
        "app", "logs", APP, "--function", "chatty", "--search", "chatter")).returncode
        else None))
    assert "log lines, more than the 300 one read may scan" in proc.stderr, proc.stderr
    assert "narrow --since" in proc.stderr
    bad = cluster.burst("app", "logs", APP, "--since", "yesterday-ish")
    assert bad.returncode == 1 and "invalid --since 'yesterday-ish'" in bad.stderr
    unknown = cluster.burst("app", "logs", "no-such-app")
    assert unknown.returncode == 1 and "app 'no-such-app' is not deployed" in unknown.stderr
    status, body = http(cluster, "/v1/logs?app=observed&call=fc-nonexistent0")
    assert status == 404 and b"call 'fc-nonexistent0' not found" in body


def test_another_workspace_sees_none_of_it(cluster: Cluster, deployed: Path) -> None:
    cluster.burst("workspace", "create", "outsider", check=True)
    token = cluster.burst("token", "create", "--workspace", "outsider", check=True
                          ).stdout.strip()
    cid = _container(cluster, "hello")
    status, body = http(cluster, f"/v1/logs?app={APP}", token)
    assert status == 404, body
    status, body = http(cluster, f"/v1/containers/{cid}/logs", token)
    assert status == 404, body
    status, body = http(cluster, "/v1/containers", token)
    assert status == 200 and json.loads(body) == {"containers": []}
    status, body = http(cluster, f"/v1/containers/{cid}/exec", token, "POST",
                        {"command": ["echo", "hi"]})
    assert status == 404, body
    status, body = http(cluster, f"/v1/containers/{cid}/stop", token, "POST", {})
    assert status == 404, body
    # /metrics: nothing of workspace default, and no cluster-wide figures.
    status, body = http(cluster, "/metrics", token)
    assert status == 200
    samples = _samples(body.decode())
    assert not any(dict(labels).get("workspace") == "default" for _, labels in samples)
    assert not any(name.startswith(("burst_agent_", "burst_gpu_", "burst_service_"))
                   for name, _ in samples)
    # The operator's view names the agent it runs on.
    listing = json.loads(http(cluster, "/v1/containers")[1])
    assert any(c["container_id"] == cid and c.get("agent_id") for c in listing["containers"])


def test_burst_shell_runs_in_a_new_container_of_the_function(
        cluster: Cluster, deployed: Path) -> None:
    before = json.loads(cluster.burst("container", "list", "--json", check=True).stdout)
    shell = subprocess.run([BURST, "shell", f"{APP}::with_secret"], env=cluster.env, text=True,
                           input="echo secret=$SHELL_SECRET app=$BURST_APP_ID\nid -u\nexit 4\n",
                           capture_output=True, timeout=90)
    # The function's secrets and environment, as its uid, and the shell's exit code.
    assert shell.returncode == 4, shell.stderr
    assert shell.stdout.split() == ["secret=s3cret", f"app={APP}", "65534"]
    cid = shell.stderr.split("shell in container ")[1].split()[0]
    assert cid not in {c["container_id"] for c in before["containers"]}  # a new one
    events = {e["event"] for e in logs(cluster, APP, "--container", cid)}
    assert {"container.started", "shell.ready"} <= events
    # It stops with the shell (and is billed as any container until then).
    until("the shell's container to stop", lambda: any(
        e["event"] == "container.stopped" for e in logs(cluster, APP, "--container", cid)))
    bad = cluster.burst("shell", APP)
    assert bad.returncode == 1 and "use APP::FUNCTION" in bad.stderr
    missing = cluster.burst("shell", f"{APP}::nope")
    assert missing.returncode == 1 and "has no function 'nope'" in missing.stderr


def _metering_of(cluster: Cluster, container_id: str) -> list[Any]:
    """Every metering record of one container (stream BURST_METERING)."""
    import asyncio

    async def go() -> list[Any]:
        import nats

        from burst_core import ledger, names
        from burst_core.schemas import MeteringRecord

        nc = await nats.connect(_nats_url(cluster))
        try:
            js = nc.jetstream()
            state = (await js.stream_info(names.STREAM_METERING)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                rec = ledger.MeteringMessageDecoder.decode(
                    (await js.get_msg(names.STREAM_METERING, seq)).data)
                if isinstance(rec, MeteringRecord) and rec.container_id == container_id:
                    out.append(rec)
            return out
        finally:
            await nc.close()
    return asyncio.run(go())


def test_burst_shell_gets_a_container_of_its_own_past_max_containers(
        cluster: Cluster, deployed: Path) -> None:
    # An idle container of `tool` exists, and max_containers=1 lets scaling have no other.
    first = call(cluster, "tool").strip()
    assert first.startswith("ct-")
    shell = subprocess.Popen([BURST, "shell", f"{APP}::tool"], env=cluster.env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert shell.stderr is not None and shell.stdin is not None
        started = shell.stderr.readline()  # once the session's container is ready
        assert "shell in container " in started, started + shell.stderr.read()
        cid = started.split("shell in container ")[1].split()[0]
        assert cid != first  # a new container, though the function is at its maximum
        # Calls made during the session run in the function's own container, never the
        # shell's (it takes no other input).
        assert [call(cluster, "tool").strip() for _ in range(3)] == [first] * 3
        listing = json.loads(cluster.burst("container", "list", "--app", APP, "--json",
                                           check=True).stdout)
        mine = {c["container_id"]: c for c in listing["containers"]}
        assert mine[cid]["state"] == "busy" and mine[cid]["inputs_served"] == 0, mine[cid]
        assert mine[first]["inputs_served"] >= 4
        shell.stdin.write("echo inside $BURST_APP_ID\n")
        shell.stdin.close()
        out = shell.stdout.read() if shell.stdout is not None else ""
        assert shell.wait(timeout=60) == 0
        assert out.split() == ["inside", APP]
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    # It stops after the session, having served no input, and it was metered.
    until("the shell's container to stop", lambda: any(
        e["event"] == "container.stopped" for e in logs(cluster, APP, "--container", cid)),
        timeout=60)
    def finished() -> list[Any] | None:
        got = _metering_of(cluster, cid)
        return got if any(r.final for r in got) else None

    records = until("the shell's final metering record", finished, timeout=60)
    assert all(r.function == "tool" and r.app == APP for r in records)
    assert sum(r.end - r.start for r in records) > 0
    assert sum(r.succeeded + r.failed for r in records) == 0
