"""The compose cluster (deploy/compose/compose.yaml) under testcontainers' Compose support.

One cluster for the module: built once (`up --build --wait`, every service healthy), used
from the host the documented way (`burst profile compose`, then `burst run
examples/hello.py`, a deploy called over HTTP and through the web port), and removed with
`down --volumes` at the end, which the last test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from burst.cli.compose import compose_env
from tests.waiting import eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import _ha_load  # noqa: E402
from _cluster import load_app  # noqa: E402

pytestmark = pytest.mark.e2e

BURST = str(Path(sys.executable).parent / "burst")
REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
#: The services that run for good (keyinit runs once and exits 0).
LONG_RUNNING = {"nats", "redis", "gateway", "scheduler", "billing", "agent", "netrules"}

APP = '''
import burst

app = burst.App("compose-http")


@app.function()
def add(a: int, b: int) -> int:
    return a + b


async def _hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from compose"})


@app.function()
@burst.asgi_app(label="hi")
def web():
    return _hello
'''


def _why_not() -> str:
    """Why the compose cluster cannot be started here, or ""."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        v = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True,
                           text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker compose version` hangs"
    if v.returncode != 0 or not v.stdout.strip().startswith("2."):
        return "no Docker Compose v2 plugin (make install links it)"
    img = subprocess.run(["docker", "image", "inspect", "burst-base:py311"],
                         capture_output=True, text=True, timeout=30)
    if img.returncode != 0:
        return "no burst-base:py311 image (deploy/base-image.sh) or no Docker engine"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ComposeCluster:
    compose: object  # testcontainers.compose.DockerCompose
    project: str
    env: dict[str, str]
    state: Path
    home: Path
    port: int
    web_port: int
    up_seconds: float

    def burst(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BURST, *args], env=self.env, cwd=REPO, text=True,
                              capture_output=True, timeout=timeout)

    def exec(self, service: str, *cmd: str) -> str:
        out, err, code = self.compose.exec_in_container(  # type: ignore[attr-defined]
            list(cmd), service_name=service)
        assert code == 0, f"{service}: {' '.join(cmd)} -> {code}\n{out}\n{err}"
        return str(out)


@pytest.fixture(scope="module")
def cc() -> Iterator[ComposeCluster]:
    if why := _why_not():
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    from testcontainers.compose import DockerCompose

    project = f"bursttest{uuid.uuid4().hex[:8]}"
    port, web_port = _free_port(), _free_port()
    # Shared with the agent's sibling containers at the same path: short (unix sockets).
    state = Path(tempfile.mkdtemp(prefix="bct-", dir="/tmp"))
    home = state / "client"
    settings = state / "burst.env"
    settings.write_text("BURST_SERVICE_HEARTBEAT_INTERVAL=0.5\nBURST_HEARTBEAT_INTERVAL=0.5\n")
    variables = {"COMPOSE_PROJECT_NAME": project, "BURST_COMPOSE_PORT": str(port),
                 "BURST_COMPOSE_WEB_PORT": str(web_port), "BURST_COMPOSE_STATE": str(state),
                 "BURST_ENV_FILE": str(settings), "BURST_AGENT_ID": f"compose-{project}"}
    # The engine's socket as `burst compose` takes it: from DOCKER_HOST, nothing else set.
    variables = {k: v for k, v in compose_env({**os.environ, **variables}).items()
                 if k in variables or k == "BURST_DOCKER_SOCKET"}
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)  # testcontainers runs `docker compose` with our env
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(BURST_HOME=str(home), COMPOSE_PROJECT_NAME=project)
    compose = DockerCompose(str(COMPOSE_DIR), compose_file_name="compose.yaml", build=True,
                            wait=True)
    t0 = time.monotonic()
    try:
        compose.start()
    except subprocess.CalledProcessError as e:
        logs = subprocess.run(["docker", "compose", "-f", str(COMPOSE_DIR / "compose.yaml"),
                               "logs", "--tail", "30"], capture_output=True, text=True)
        compose.stop()
        raise AssertionError(f"compose up failed:\n{e.stderr.decode()[-3000:]}\n"
                             f"{logs.stdout[-4000:]}") from None
    c = ComposeCluster(compose, project, env, state, home, port, web_port,
                         time.monotonic() - t0)
    print(f"compose up --build --wait: {c.up_seconds:.1f} s")
    try:
        yield c
    finally:
        compose.stop()  # down --volumes
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(state, ignore_errors=True)


# ---- the ha profile (its own cluster, before the module's single-node one starts) -------
HA = ["-f", str(COMPOSE_DIR / "compose.ha.yaml"), "--profile", "ha"]
#: Every long-running service of the ha profile -> how many containers it runs.
HA_SERVICES = {"nats": 1, "nats-2": 1, "nats-3": 1, "redis": 1, "gateway": 1, "gateway-2": 1,
               "scheduler": 2, "billing": 1, "agent": 1, "netrules": 1}
#: NATS server name -> its compose service.
HA_NODES = {"burst-n1": "nats", "burst-n2": "nats-2", "burst-n3": "nats-3"}
#: Seconds for the killed node to be back and every stream current again (a loaded
#: machine); the gap in service must stay under GAP_LIMIT (target 12 s; nats-server's own
#: election takes 4-9 s). Measured: 10.4 s at load 3, but 40.0 s at load 12 on 2 cores
#: (the call loop's one call waited through the whole kill and catch-up, which took 37 s):
#: wide, for a loaded CI machine; the figure is printed every run.
CATCH_UP_TIMEOUT = 180.0
GAP_LIMIT = 60.0
#: The function writes a line to its container's own stdout (fd 1, which the engine logs;
#: Python's sys.stdout goes to the agent), so runs are counted from the containers' output.
HA_APP = '''
import os

import burst

app = burst.App("compose-ha")


@app.function(scaledown_window=600)
def echo(path, tag):
    os.write(1, f"ran {tag}\\n".encode())
    return tag
'''


@dataclass
class HaCluster:
    env: dict[str, str]  # `burst compose`'s: DOCKER_HOST and the compose variables only
    project: str
    state: Path
    urls: list[str]
    token: str

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BURST, "compose", *HA, *args], env=self.env, cwd=REPO,
                              text=True, capture_output=True, timeout=timeout)

    def containers(self) -> list[dict[str, object]]:
        out = self.compose("ps", "-a", "--format", "json")
        assert out.returncode == 0, out.stderr
        text = out.stdout.strip()
        rows = json.loads(text) if text.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
        return list(rows)

    def cid(self, service: str) -> str:
        out = self.compose("ps", "-aq", service)
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
        return out.stdout.split()[0]

    def views(self) -> dict[str, dict[str, dict[str, Any]]]:
        """NATS node -> stream -> the stream's cluster info as that node sees it."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for server, service in HA_NODES.items():
            got = subprocess.run(["docker", "exec", self.cid(service), "curl", "-fsS", "-m", "3",
                                  "http://127.0.0.1:8222/jsz?streams=true"],
                                 capture_output=True, text=True, timeout=30)
            if got.returncode != 0:
                continue
            d = json.loads(got.stdout)
            out[server] = {st["name"]: st.get("cluster") or {}
                           for a in d.get("account_details") or []
                           for st in a.get("stream_detail") or []}
        return out

    def caught_up(self) -> bool:
        """Every node answers, and every stream has a leader that sees both of its other
        replicas current."""
        views = self.views()
        if len(views) != len(HA_NODES):
            return False
        names = {name for view in views.values() for name in view}
        for name in names:
            leader = next((str(v[name]["leader"]) for v in views.values()
                           if v.get(name, {}).get("leader")), "")
            mine = views.get(leader, {}).get(name, {})
            replicas = mine.get("replicas") or []
            assert isinstance(replicas, list)
            if mine.get("leader") != leader or len(replicas) != 2 \
                    or not all(r.get("current") for r in replicas):
                return False
        return _ha_load.INPUTS in names

    def runs(self) -> Counter[str]:
        """tag -> how many times the function ran, from its containers' own output."""
        owner = self.state / "home" / "agent" / f"compose-{self.project}" / "images"
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=burst.owner={owner}"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        assert ids, "no function container"
        runs: Counter[str] = Counter()
        for cid in ids:
            logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True,
                                  timeout=60)
            runs.update(line.split()[1] for line in logs.stdout.splitlines()
                        if line.startswith("ran "))
        return runs


@pytest.fixture
def ha() -> Iterator[HaCluster]:
    if why := _why_not():
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    project = f"bursttestha{uuid.uuid4().hex[:6]}"
    state = Path(tempfile.mkdtemp(prefix="bcha-", dir="/tmp"))
    settings = state / "burst.env"
    settings.write_text("BURST_SERVICE_HEARTBEAT_INTERVAL=0.5\nBURST_HEARTBEAT_INTERVAL=0.5\n"
                        # A container is unresponsive only after 15 s without a frame: a
                        # node's kill on a loaded machine stalls everything for seconds.
                        "BURST_CONTAINER_HEARTBEAT_TIMEOUT=15\n")
    ports = [_free_port() for _ in range(4)]
    # Nothing of Burst's own settings: `burst compose` takes the socket from DOCKER_HOST.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(COMPOSE_PROJECT_NAME=project, BURST_COMPOSE_STATE=str(state),
               BURST_ENV_FILE=str(settings), BURST_AGENT_ID=f"compose-{project}",
               BURST_COMPOSE_PORT=str(ports[0]), BURST_COMPOSE_WEB_PORT=str(ports[1]),
               BURST_COMPOSE_PORT_2=str(ports[2]), BURST_COMPOSE_WEB_PORT_2=str(ports[3]))
    c = HaCluster(env, project, state, [f"http://127.0.0.1:{ports[0]}",
                                        f"http://127.0.0.1:{ports[2]}"], "")
    try:
        t0 = time.monotonic()
        up = c.compose("up", "-d", "--wait", "--build", timeout=900)
        if up.returncode != 0:
            logs = c.compose("logs", "--tail", "30")
            raise AssertionError(f"ha up failed:\n{up.stderr[-3000:]}\n{logs.stdout[-4000:]}")
        print(f"compose --profile ha up --build --wait: {time.monotonic() - t0:.1f} s")
        home = state / "client"
        prof = subprocess.run([BURST, "profile", "compose", "-p", project],
                              env={**env, "BURST_HOME": str(home)}, cwd=REPO, text=True,
                              capture_output=True, timeout=180)
        assert prof.returncode == 0, prof.stderr
        c.token = json.loads((home / "profile.json").read_text())["token"]
        yield c
    finally:
        down = c.compose("down", "--volumes", "--timeout", "30", timeout=300)
        assert down.returncode == 0, down.stderr
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.timeout(1500)
def test_ha_profile_survives_the_stream_leaders_node_killed_under_calls(
        ha: HaCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Three NATS nodes, two gateways, two schedulers, billing, the agent: all healthy.
    rows = [r for r in ha.containers() if r["Service"] != "keyinit"]
    count: Counter[str] = Counter(str(r["Service"]) for r in rows)
    assert dict(count) == HA_SERVICES, count
    for r in rows:
        assert r["State"] == "running" and r["Health"] == "healthy", r
    eventually(ha.caught_up, 120, "every stream led and current on three nodes")
    for name, info in next(iter(ha.views().values())).items():  # R3 everywhere
        assert info.get("leader") and len(info.get("replicas") or []) == 2, (name, info)

    # A loop of calls (and maps) through both gateways while the inputs leader is killed.
    monkeypatch.setenv("BURST_URL", ",".join(ha.urls))
    monkeypatch.setenv("BURST_TOKEN", ha.token)
    mod = load_app(tmp_path, f"compose_ha_{ha.project}", HA_APP)
    with mod.app.run(show_output=False):
        for i in range(3):
            assert mod.echo.remote("", f"w{i}") == f"w{i}"
        load = _ha_load.Load(mod.echo, tmp_path / "unused", map_size=5).start()
        try:
            time.sleep(3)
            leader = next(str(v[_ha_load.INPUTS]["leader"]) for v in ha.views().values()
                          if v.get(_ha_load.INPUTS, {}).get("leader"))
            node = ha.cid(HA_NODES[leader])
            killed_at = time.time()
            kill = subprocess.run(["docker", "kill", node], capture_output=True, text=True,
                                  timeout=60)
            assert kill.returncode == 0, kill.stderr
            time.sleep(1)
            start = subprocess.run(["docker", "start", node], capture_output=True, text=True,
                                   timeout=60)
            assert start.returncode == 0, start.stderr
            eventually(ha.caught_up, CATCH_UP_TIMEOUT,
                       f"{leader} back and every stream current again")
            caught_up_s = time.time() - killed_at
            time.sleep(3)
            until = time.time()
        finally:
            load.stop()
        gap = load.gap(killed_at, until)
        with capsys.disabled():
            print(f"\ncompose ha: killed {leader} (BURST_INPUTS leader); caught up after "
                  f"{caught_up_s:.1f} s; gap in service {gap:.1f} s; calls acknowledged "
                  f"{len(load.acked)}, not acknowledged {len(load.unacked)}, maps "
                  f"{load.maps_done}")
        assert load.acked and load.maps_done, load.errors[:5]
        # Every acknowledged call got exactly its own result, and every input ran once.
        load.executions = ha.runs
        assert load.check() == [], (load.check()[:20], load.errors[:10])
        assert gap < GAP_LIMIT, gap
    # A call through the second gateway alone.
    run = subprocess.run([BURST, "run", "examples/hello.py"], cwd=REPO, text=True,
                         capture_output=True, timeout=300,
                         env={**ha.env, "BURST_URL": ha.urls[1], "BURST_TOKEN": ha.token})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "remote: 16" in run.stdout


def test_every_service_is_healthy(cc: ComposeCluster) -> None:
    containers = cc.compose.get_containers(include_all=True)  # type: ignore[attr-defined]
    by_service: dict[str, list[object]] = {}
    for ct in containers:
        by_service.setdefault(ct.Service, []).append(ct)
    assert set(by_service) == LONG_RUNNING | {"keyinit"}
    assert len(by_service["scheduler"]) == 2
    for name in LONG_RUNNING:
        for ct in by_service[name]:
            assert ct.State == "running" and ct.Health == "healthy", (name, ct.State, ct.Health)
    (init,) = by_service["keyinit"]
    assert init.State == "exited" and init.ExitCode == 0  # type: ignore[attr-defined]


def test_profile_of_a_cluster_not_up_is_a_clear_error(cc: ComposeCluster) -> None:
    other = cc.burst("profile", "compose", "-p", f"{cc.project}-not-up")
    assert other.returncode == 1
    assert 'service "gateway" is not running' in other.stderr, other.stderr
    assert "up -d --wait --build" in other.stderr
    missing = cc.burst("profile", "compose", "-f", "/nonexistent/compose.yaml")
    assert missing.returncode == 1
    assert "compose file /nonexistent/compose.yaml not found" in missing.stderr
    assert not (cc.home / "profile.json").exists()


def test_profile_then_hello_runs_unchanged(cc: ComposeCluster) -> None:
    out = cc.burst("profile", "compose", timeout=120)
    assert out.returncode == 0, out.stderr
    profile = json.loads((cc.home / "profile.json").read_text())
    assert profile["url"] == f"http://127.0.0.1:{cc.port}"
    assert profile["token"].startswith("bst_")
    t0 = time.monotonic()
    run = cc.burst("run", "examples/hello.py", timeout=300)
    print(f"first burst run examples/hello.py on compose: {time.monotonic() - t0:.1f} s")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "remote: 16" in run.stdout
    assert "loop of remote calls: [0, 1, 4, 9, 16]" in run.stdout
    # The agent's logs are in `docker compose logs`.
    logs = cc.compose.get_logs("agent")  # type: ignore[attr-defined]
    assert "agent_started" in logs[0] + logs[1]


def test_deployed_function_over_http_and_web_port(cc: ComposeCluster,
                                                  tmp_path: Path) -> None:
    if not (cc.home / "profile.json").exists():
        assert cc.burst("profile", "compose").returncode == 0
    token = json.loads((cc.home / "profile.json").read_text())["token"]
    app = tmp_path / "compose_http.py"
    app.write_text(APP)
    dep = cc.burst("deploy", str(app))
    assert dep.returncode == 0, dep.stdout + dep.stderr
    r = httpx.post(f"http://127.0.0.1:{cc.port}/v1/apps/compose-http/functions/add/calls",
                   params={"wait": 60}, json={"args": [2, 40]},
                   headers={"Authorization": f"Bearer {token}"}, timeout=90)
    assert r.status_code == 200, r.text
    assert r.json()["result"] == 42, r.text
    web = httpx.get(f"http://127.0.0.1:{cc.web_port}/default/compose-http/hi/", timeout=90)
    assert web.status_code == 200, web.text
    assert web.text == "hello from compose"


NET_APP = '''
import json
import socket

import burst

app = burst.App("compose-net")


def _probe(targets):
    out = {}
    for name, (host, port) in targets.items():
        try:
            with socket.create_connection((host, port), timeout=5):
                out[name] = "reached"
        except Exception as e:
            out[name] = type(e).__name__ + ": " + str(e)[:80]
    with open("/proc/net/route") as f:
        out["routes"] = len(f.read().splitlines()) - 1
    return out


@app.function(scaledown_window=5)
def probe(targets):
    return _probe(targets)


@app.function(scaledown_window=5)
def probe_stale(targets):
    return _probe(targets)


TARGETS = @TARGETS@


@app.local_entrypoint()
def main():
    print("RESULT", json.dumps(probe.remote(TARGETS)))


@app.local_entrypoint()
def stale():
    print("RESULT", json.dumps(probe_stale.remote(TARGETS)))
'''


def _inspect(cid: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", cid], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]  # type: ignore[no-any-return]


def _probe(cc: ComposeCluster, tmp_path: Path, targets: dict[str, tuple[str, int]],
           entry: str) -> dict[str, Any]:
    app = tmp_path / "compose_net.py"
    app.write_text(NET_APP.replace("@TARGETS@", repr(targets)))
    t0 = time.monotonic()
    run = cc.burst("run", f"{app}::{entry}", timeout=300)
    print(f"burst run {entry}: {time.monotonic() - t0:.1f} s")
    assert run.returncode == 0, run.stdout + run.stderr
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, run.stdout + run.stderr
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


@pytest.fixture
def internet() -> Iterator[tuple[str, int]]:
    """A stand-in for the internet: an HTTP server on a Docker network of the test's own
    (a bridge of its own name, in 198.18.0.0/15, outside every denied range)."""
    tag = uuid.uuid4().hex[:6]
    subnet = f"198.18.{int(tag[:2], 16)}"
    name = f"bursttest-inet-{tag}"
    made = subprocess.run(["docker", "network", "create", "--subnet", f"{subnet}.0/24",
                           "-o", f"com.docker.network.bridge.name=bstin{tag}", name],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    server = subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", name,
                             "--ip", f"{subnet}.10", "burst-base:py311", "python3", "-m",
                             "http.server", "8080"], capture_output=True, text=True,
                            timeout=120)
    try:
        assert server.returncode == 0, server.stderr
        yield f"{subnet}.10", 8080
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=60)


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if not a["local"].startswith("127.")]


@pytest.mark.timeout(900)  # the module's cluster may be started first
def test_function_containers_reach_the_internet_never_the_cluster_or_the_host(
        cc: ComposeCluster, tmp_path: Path, internet: tuple[str, int]) -> None:
    if not (cc.home / "profile.json").exists():
        assert cc.burst("profile", "compose").returncode == 0
    # netrules: the only service in the host's network namespace, NET_ADMIN/NET_RAW only,
    # no engine socket, no port.
    by_service = {ct.Service: _inspect(ct.ID)  # type: ignore[attr-defined]
                  for ct in cc.compose.get_containers()}  # type: ignore[attr-defined]
    assert [s for s, c in by_service.items() if c["HostConfig"]["NetworkMode"] == "host"] \
        == ["netrules"]
    rules = by_service["netrules"]["HostConfig"]
    assert rules["CapDrop"] == ["ALL"], rules["CapDrop"]
    assert sorted(c.removeprefix("CAP_") for c in rules["CapAdd"]) == ["NET_ADMIN", "NET_RAW"]
    assert not rules["PortBindings"] and not rules["Privileged"]
    assert not any("docker.sock" in m["Source"] for m in by_service["netrules"]["Mounts"])
    state = json.loads((cc.state / "netrules" / "rules.json").read_text())
    assert state["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    # Something listening on every host address, which the host itself reaches.
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        targets: dict[str, tuple[str, int]] = {"internet": internet,
                                               "host_loopback": ("127.0.0.1", cc.port)}
        for addr in _host_addresses():
            with socket.create_connection((addr, port), timeout=5):
                pass
            targets[f"host_{addr}"] = (addr, port)
        for service, svc_port in (("nats", 4222), ("redis", 6379), ("gateway", 8780)):
            nets = by_service[service]["NetworkSettings"]["Networks"]
            for net_name, net in nets.items():
                targets[f"{service}@{net_name}"] = (net["IPAddress"], svc_port)
        got = _probe(cc, tmp_path, targets, "main")
        assert got["internet"] == "reached", got
        for name, result in got.items():
            if name not in ("internet", "routes"):
                assert result.startswith("ConnectionRefusedError"), (name, result, got)

        # Rules not reported fresh (netrules stopped, its file old): a new container gets
        # no network at all.
        stop = subprocess.run(["docker", "stop", by_service["netrules"]["Id"]],
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        try:
            path = cc.state / "netrules" / "rules.json"
            path.write_text(json.dumps({**state, "time": time.time() - 3600}))
            stale = _probe(cc, tmp_path, {"internet": internet}, "stale")
            assert stale["routes"] == 0 and stale["internet"] != "reached", stale
        finally:
            start = subprocess.run(["docker", "start", by_service["netrules"]["Id"]],
                                   capture_output=True, text=True, timeout=120)
            assert start.returncode == 0, start.stderr
        eventually(lambda: json.loads(path.read_text())["time"] > time.time() - 30, 60,
                   "netrules wrote rules.json again")


def test_master_key_only_in_the_gateway(cc: ComposeCluster) -> None:
    # The gateway holds the master key ring (made by keyinit on the first up) ...
    assert cc.exec("gateway", "sh", "-c", "test -s /var/lib/burst/keys/secrets.key && echo ok"
                   ).strip() == "ok"
    # ... billing only the derived webhook key, read-only, and no master key anywhere.
    billing = cc.exec("billing", "sh", "-c",
                      "cat /var/lib/burst/webhook/webhook.keys; env | grep -c MASTER_KEYS; "
                      "find / -xdev -name secrets.key 2>/dev/null | wc -l; "
                      "touch /var/lib/burst/webhook/x 2>/dev/null && echo writable || true")
    lines = billing.split()
    kid, _, key = lines[0].partition(":")
    assert len(kid) == 12 and len(key) == 44, "webhook.keys is '<key id>:<fernet key>'"
    assert lines[1:] == ["0", "0"], billing  # no BURST_MASTER_KEYS, no secrets.key, read-only
    master = cc.exec("gateway", "cat", "/var/lib/burst/keys/secrets.key").split()[0]
    assert master not in billing and key != master
    # A second `up` (compose started twice) disturbs nothing and keeps the key.
    again = subprocess.run(["docker", "compose", "-f", str(COMPOSE_DIR / "compose.yaml"),
                            "up", "-d", "--wait"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert cc.exec("gateway", "cat", "/var/lib/burst/keys/secrets.key").split()[0] == master
    out, _ = cc.compose.get_logs("keyinit")  # type: ignore[attr-defined]
    assert "kept in" in out and master not in out


def test_down_volumes_forgets_it(cc: ComposeCluster) -> None:
    owner = cc.state / "home" / "agent" / f"compose-{cc.project}" / "images"

    def siblings() -> str:
        out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=burst.owner={owner}"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    assert siblings(), "the deployed app's container is still up (its scaledown window)"
    cc.compose.stop()  # type: ignore[attr-defined]
    left = subprocess.run(["docker", "ps", "-aq", "--filter",
                           f"label=com.docker.compose.project={cc.project}"],
                          capture_output=True, text=True)
    assert left.stdout.strip() == ""
    # The agent stopped its function containers (siblings, outside the project) too.
    assert siblings() == ""
    vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter",
                           f"label=com.docker.compose.project={cc.project}"],
                          capture_output=True, text=True)
    assert vols.stdout.strip() == ""
