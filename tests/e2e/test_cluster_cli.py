"""``burst up`` / ``status`` / ``down`` as a user runs them: real processes, a temporary home."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from burst._cluster import (
    DEFAULT_PORTS,
    HOST,
    Launcher,
    PortTaken,
    pick_ports,
    start_cluster,
    wait_healthy,
)
from burst._parts import Part, all_procs, is_alive, members, proc_info
from burst.cli.cluster import Progress
from burst.client import Client
from burst.exception import UnavailableError
from tests.servers import nats_binary

UP_TIMEOUT = 90  # seconds `burst up` may take to report healthy in these tests


def burst_command() -> list[str]:
    script = Path(sys.executable).parent / "burst"
    return [str(script)] if script.exists() else [sys.executable, "-m", "burst.cli.main"]


def burst(
    env: dict[str, str], *args: str, timeout: float = UP_TIMEOUT + 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*burst_command(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def require_servers() -> None:
    missing = [
        n
        for n, found in (
            ("nats-server", nats_binary()),
            ("redis-server", shutil.which("redis-server")),
        )
        if not found
    ]
    if missing:
        message = f"{', '.join(missing)} not found: run `make install`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def user_env(root: Path) -> dict[str, str]:
    """A user's environment with its own HOME and BURST_HOME, and no Burst profile variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    (root / "home").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(root / "home"), BURST_HOME=str(root / "burst-home"))
    return env


def home_of(env: dict[str, str]) -> Path:
    return Path(env["BURST_HOME"])


def cluster_json(env: dict[str, str]) -> dict[str, Any]:
    return json.loads((home_of(env) / "cluster.json").read_text())  # type: ignore[no-any-return]


def processes_of(home: Path) -> list[int]:
    """Pids of live processes whose command line or environment names ``home``."""
    needle = str(home).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        info = proc_info(int(entry))
        if info is not None and not info.zombie and (needle in cmdline or needle in environ):
            found.append(int(entry))
    return found


def assert_clean_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit status 1 and a one-line ``Error: ...`` (notes such as a log tail may follow)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    before, sep, _ = result.stderr.partition("Error: ")
    assert sep and "Traceback" not in before, result.stderr  # no traceback of the CLI itself
    assert any(line.startswith("Error: ") for line in result.stderr.splitlines()), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def assert_up(result: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    if result.returncode != 0:
        logs = home_of(env) / "logs"
        tails = {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")} if logs.exists() else {}
        pytest.fail(f"burst up failed:\n{result.stderr}\n{result.stdout}\nlogs: {tails}")


def stop_if_running(env: dict[str, str]) -> None:
    if (home_of(env) / "cluster.json").exists():
        burst(env, "down")


@pytest.fixture(scope="module")
def up_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], subprocess.CompletedProcess[str]]]:
    """One cluster shared by the read-only tests of this module."""
    require_servers()
    env = user_env(tmp_path_factory.mktemp("cluster"))
    result = burst(env, "up", "--timeout", str(UP_TIMEOUT))
    try:
        assert_up(result, env)
        yield env, result
    finally:
        stop_if_running(env)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    require_servers()
    env = user_env(tmp_path)
    yield env
    stop_if_running(env)


@pytest.mark.e2e
def test_up_starts_a_healthy_cluster(
    up_cluster: tuple[dict[str, str], subprocess.CompletedProcess[str]],
) -> None:
    env, result = up_cluster
    home = home_of(env)
    state = cluster_json(env)
    assert "Burst cluster is up" in result.stdout
    assert str(home / "logs") in result.stdout
    assert [p["name"] for p in state["parts"]] == [
        "nats",
        "redis",
        "scheduler",
        "billing",
        "gateway",
        "agent",
    ]
    for part in state["parts"]:
        assert is_alive(part["pid"], part["started"]), part
        assert part["pgid"] == part["pid"]  # each in its own process group
        assert Path(part["log"]).parent == home / "logs"

    profile = json.loads((home / "profile.json").read_text())
    assert stat.S_IMODE((home / "profile.json").stat().st_mode) == 0o600
    assert profile["url"] == state["url"] and profile["workspace"] == "default"
    assert profile["token"].startswith("bst_") and len(profile["token"]) > 40
    gateway_log = (home / "logs" / "gateway.log").read_text()
    assert profile["token"] not in gateway_log  # only its hash reaches the gateway
    code, body = Client(state["url"], "").request("GET", "/healthz")
    assert code == 200 and json.loads(body)["ok"] is True


@pytest.mark.e2e
def test_status_shows_healthy_parts(
    up_cluster: tuple[dict[str, str], subprocess.CompletedProcess[str]],
) -> None:
    env, _ = up_cluster
    result = burst(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["problems"] == []
    assert all(p["running"] for p in report["parts"])
    services = {s["service"] for s in report["status"]["services"]}
    assert {"scheduler", "billing"} <= services
    assert [a["agent_id"] for a in report["status"]["agents"]] == ["local"]

    table = burst(env, "status")
    assert table.returncode == 0, table.stderr
    for word in ("nats", "redis", "gateway", "scheduler", "billing", "agent", "running", "local"):
        assert word in table.stdout


@pytest.mark.e2e
def test_second_up_fails_cleanly_and_starts_nothing(
    up_cluster: tuple[dict[str, str], subprocess.CompletedProcess[str]],
) -> None:
    env, _ = up_cluster
    home = home_of(env)
    before_state = (home / "cluster.json").read_text()
    before_profile = (home / "profile.json").read_text()
    before_procs = set(processes_of(home))

    result = burst(env, "up", "--timeout", "10")
    assert_clean_error(result, "already running", "burst down")
    assert (home / "cluster.json").read_text() == before_state
    assert (home / "profile.json").read_text() == before_profile
    assert set(processes_of(home)) == before_procs
    assert burst(env, "status").returncode == 0


@pytest.mark.e2e
def test_down_stops_every_process_it_started(env: dict[str, str]) -> None:
    assert_up(burst(env, "up", "--timeout", str(UP_TIMEOUT)), env)
    home = home_of(env)
    parts = cluster_json(env)["parts"]
    assert processes_of(home)

    result = burst(env, "down")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    still_alive = [p["name"] for p in parts if is_alive(p["pid"], p["started"])]
    assert still_alive == []
    assert processes_of(home) == []
    assert not (home / "cluster.json").exists()

    again = burst(env, "down")
    assert_clean_error(again, "no Burst cluster is running", str(home))
    status = burst(env, "status")
    assert_clean_error(status, "no Burst cluster is running", "burst up")


@pytest.mark.e2e
def test_down_with_nothing_running_fails_clearly(env: dict[str, str]) -> None:
    result = burst(env, "down")
    assert_clean_error(result, "no Burst cluster is running", str(home_of(env)), "nothing to stop")


@pytest.mark.e2e
def test_up_avoids_taken_ports_and_replaces_stale_state(env: dict[str, str]) -> None:
    home = home_of(env)
    home.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_part = {
        "name": "gateway", "pid": dead.pid, "pgid": dead.pid, "started": 0,
        "log": str(home / "logs" / "gateway.log"), "ports": {},
    }  # fmt: skip
    stale = {"home": str(home), "url": "http://127.0.0.1:1", "started_at": 0.0}
    (home / "cluster.json").write_text(json.dumps({**stale, "parts": [stale_part]}))

    # The gateway's preferred port is one this test holds, so no other program can free it
    # meanwhile; the NATS default is held too when it is free (else someone else has it).
    gateway_blocker = socket.socket()
    gateway_blocker.bind((HOST, 0))
    gateway_blocker.listen()
    taken = gateway_blocker.getsockname()[1]
    nats_blocker = socket.socket()
    try:
        nats_blocker.bind((HOST, DEFAULT_PORTS["nats"]))
        nats_blocker.listen()
        holds_nats_default = True
    except OSError:
        holds_nats_default = False
    try:
        result = burst(env, "up", "--port", str(taken), "--timeout", str(UP_TIMEOUT))
        assert_up(result, env)
    finally:
        gateway_blocker.close()
        nats_blocker.close()
    assert "stale" in result.stderr
    assert f"port {taken} (gateway) is taken" in result.stderr
    parts = {p["name"]: p for p in cluster_json(env)["parts"]}
    gateway_port = parts["gateway"]["ports"]["http"]
    assert gateway_port != taken
    if holds_nats_default:
        assert parts["nats"]["ports"]["client"] != DEFAULT_PORTS["nats"]
        assert f"port {DEFAULT_PORTS['nats']} (nats) is taken" in result.stderr
    profile = json.loads((home / "profile.json").read_text())
    assert profile["url"] == f"http://{HOST}:{gateway_port}"
    assert burst(env, "status").returncode == 0
    assert burst(env, "down").returncode == 0


@pytest.mark.e2e
def test_up_that_fails_names_the_part_and_stops_everything(env: dict[str, str]) -> None:
    # An invalid setting makes every service exit at start; the first one seen is blamed.
    result = burst({**env, "BURST_HEARTBEAT_INTERVAL": "soon"}, "up", "--timeout", "60")
    assert_clean_error(result, "exited with status 1 while starting", "last lines of")
    assert "BURST_HEARTBEAT_INTERVAL='soon'" in result.stderr  # the tail of its log
    assert not (home_of(env) / "cluster.json").exists()
    assert processes_of(home_of(env)) == []
    assert not (home_of(env) / "profile.json").exists()


def test_wait_healthy_names_the_late_part_with_its_log(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    part = launcher.start("scheduler", ["sh", "-c", "echo scheduler booting; exec sleep 60"], {})
    time.sleep(0.2)
    try:
        with pytest.raises(UnavailableError) as e:
            wait_healthy(
                launcher,
                [("services", lambda: "scheduler: no liveness record yet")],
                time.monotonic() + 0.3,
                Progress(Console(file=io.StringIO())),
                0.3,
            )
    finally:
        launcher.stop_all()
    assert "not healthy within 0.3 s: scheduler: no liveness record yet" in str(e.value)
    assert "scheduler booting" in "".join(e.value.__notes__)
    assert not is_alive(part.pid, part.started)


def test_wait_healthy_fails_fast_when_a_part_exits(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    launcher.start("gateway", ["sh", "-c", "echo port in use; exit 3"], {})
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="gateway exited with status 3") as e:
        wait_healthy(
            launcher,
            [("gateway", lambda: "gateway: not yet")],
            time.monotonic() + 30,
            Progress(Console(file=io.StringIO())),
            30,
        )
    assert time.monotonic() - started < 5
    assert "port in use" in "".join(e.value.__notes__)


def test_wait_healthy_tells_a_port_taken_meanwhile(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    launcher.start("gateway", ["sh", "-c", "echo 'ERROR: [Errno 98] error while attempting to "
                                           "bind on address: address already in use'; exit 3"],
                   {}, http=1, web=2)
    with pytest.raises(PortTaken, match="gateway could not listen on its port") as e:
        wait_healthy(launcher, [("gateway", lambda: "gateway: not yet")],
                     time.monotonic() + 30, Progress(Console(file=io.StringIO())), 30)
    assert e.value.roles == ["gateway", "web"]


@pytest.mark.e2e
def test_up_starts_again_on_new_ports_when_a_port_is_taken_after_the_check(
        env: dict[str, str]) -> None:
    """Another cluster may bind a port between `burst up`'s check and its part's bind: the
    part exits ("address already in use") and the cluster starts again with a new port,
    before the profile is written."""
    blocker = socket.socket()
    blocker.bind((HOST, 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    ports = {**pick_ports(DEFAULT_PORTS), "gateway": taken}  # as if taken after the pick
    out = io.StringIO()
    home = home_of(env)
    home.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the services' environment is this process's
    try:
        state, profile = start_cluster(home, ports, "", False, UP_TIMEOUT,
                                       Progress(Console(file=out)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        blocker.close()
    try:
        gateway = next(p for p in state.parts if p.name == "gateway")
        assert gateway.ports["http"] != taken
        assert profile.url == f"http://{HOST}:{gateway.ports['http']}"
        assert f"port {taken} (gateway) was taken meanwhile" in out.getvalue()
        assert burst(env, "status").returncode == 0
    finally:
        assert burst(env, "down").returncode == 0


def test_members_never_claim_a_reused_process_id() -> None:
    me = proc_info(os.getpid())
    assert me is not None
    procs = all_procs()
    mine = Part(name="x", pid=me.pid, pgid=me.pgid, started=me.started, log="")
    assert me.pid in {p.pid for p in members(mine, procs)}
    # A part recorded with this pid but an earlier start time died; the id is someone else's.
    recycled = Part(name="x", pid=me.pid, pgid=me.pid, started=me.started - 1, log="")
    assert members(recycled, procs) == []


def test_pick_ports_replaces_a_taken_port() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        taken = s.getsockname()[1]
        ports = pick_ports({"a": taken, "b": taken})
    assert ports["a"] != taken and ports["b"] != taken and ports["a"] != ports["b"]


def test_is_alive_tells_a_recycled_pid_apart() -> None:
    me = proc_info(os.getpid())
    assert me is not None
    assert is_alive(os.getpid(), me.started)
    assert not is_alive(os.getpid(), me.started + 1)  # same pid, another process
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not is_alive(dead.pid, 0)
