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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

BURST = str(Path(sys.executable).parent / "burst")
REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
#: The services that run for good (keyinit runs once and exits 0).
LONG_RUNNING = {"nats", "redis", "gateway", "scheduler", "billing", "agent"}

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
    host = os.environ.get("DOCKER_HOST", "")
    sock = host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"
    settings = state / "burst.env"
    settings.write_text("BURST_SERVICE_HEARTBEAT_INTERVAL=0.5\nBURST_HEARTBEAT_INTERVAL=0.5\n")
    compose_env = {"COMPOSE_PROJECT_NAME": project, "BURST_COMPOSE_PORT": str(port),
                   "BURST_COMPOSE_WEB_PORT": str(web_port), "BURST_COMPOSE_STATE": str(state),
                   "BURST_DOCKER_SOCKET": sock, "BURST_ENV_FILE": str(settings),
                   "BURST_AGENT_ID": f"compose-{project}"}
    saved = {k: os.environ.get(k) for k in compose_env}
    os.environ.update(compose_env)  # testcontainers runs `docker compose` with our env
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
