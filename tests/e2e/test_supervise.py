"""`burst up` supervises its parts: a SIGKILLed part comes back, is counted in `burst status`,
and `burst down` still stops everything; with ``BURST_SUPERVISE=0`` a killed part stays
down. Either way a killed service leaves the Services table of `burst status` once its
heartbeat timeout has passed.

Two clusters: one supervised with a short restart backoff, one not.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from burst._parts import Part, all_procs, is_alive, members
from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_cluster_cli import processes_of
from tests.e2e.test_hello import write_app
from tests.waiting import eventually

if TYPE_CHECKING:
    from burst._parts import ProcInfo

pytestmark = pytest.mark.e2e

#: Short enough that only a service whose record is dropped leaves the table in time.
SERVICE_HEARTBEAT_TIMEOUT = 3.0
SUPERVISED = {
    "BURST_SUPERVISE_BACKOFF": "0.2",
    "BURST_SUPERVISE_BACKOFF_MAX": "5",
    "BURST_SERVICE_HEARTBEAT_TIMEOUT": str(SERVICE_HEARTBEAT_TIMEOUT),
}
UNSUPERVISED = {
    "BURST_SUPERVISE": "0",
    "BURST_SERVICE_HEARTBEAT_TIMEOUT": str(SERVICE_HEARTBEAT_TIMEOUT),
}

APP = """
    import burst

    app = burst.App("supervised")

    @app.function()
    def square(x):
        return x * x
"""


def _cluster(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Cluster]:
    """A module's cluster; a test may have stopped it already with `burst down`."""
    up = running_cluster(tmp_path_factory, **env)
    c = next(up)
    yield c
    if (c.home / "cluster.json").exists():
        next(up, None)  # `burst down`, checked


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path_factory, SUPERVISED)


@pytest.fixture(scope="module")
def unsupervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path_factory, UNSUPERVISED)


def state(c: Cluster) -> dict[str, Any]:
    return json.loads((c.home / "cluster.json").read_text())  # type: ignore[no-any-return]


def part(c: Cluster, name: str) -> dict[str, Any]:
    return next(p for p in state(c)["parts"] if p["name"] == name)


def descendants(p: dict[str, Any]) -> list[ProcInfo]:
    """The live processes of a recorded part: its group and what it started."""
    recorded = Part(name=p["name"], pid=p["pid"], pgid=p["pgid"], started=p["started"],
                    log=p["log"])
    return members(recorded, all_procs())


def still_running(procs: list[ProcInfo]) -> list[int]:
    return [p.pid for p in procs if is_alive(p.pid, p.started)]


def api(c: Cluster, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    profile = c.profile
    req = urllib.request.Request(
        profile["url"] + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {profile['token']}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def square(c: Cluster, x: int) -> Any:
    """Call the deployed function over HTTP; its result, or None if it did not answer."""
    try:
        code, body = api(c, "POST", "/v1/apps/supervised/functions/square/calls?wait=5",
                         {"args": [x]})
    except OSError:
        return None
    return body.get("result") if code == 200 else None


def status(c: Cluster) -> tuple[int, dict[str, Any], str]:
    proc = c.burst("status", "--json", timeout=60)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def service_instances(c: Cluster, service: str) -> set[str]:
    code, body = api(c, "GET", "/v1/status")
    assert code == 200, body
    return {s["instance"] for s in body["services"] if s["service"] == service}


def test_a_killed_agent_comes_back_and_serves_calls(supervised: Cluster, tmp_path: Path) -> None:
    c = supervised
    supervised.burst("deploy", str(write_app(tmp_path, APP, "supervised_app.py")), check=True)
    assert square(c, 3) == 9  # a container is live on the agent
    agent = part(c, "agent")
    old_procs = descendants(agent)
    assert len(old_procs) > 1, old_procs  # the agent and its zygote/containers

    os.kill(agent["pid"], signal.SIGKILL)
    killed = time.monotonic()
    again = eventually(lambda: (p := part(c, "agent")).get("restarts") == 1 and p, 30,
                       "the supervisor restarted the agent")
    restarted = time.monotonic() - killed
    assert again["pid"] != agent["pid"] and is_alive(again["pid"], again["started"])
    # `burst up` started it, so its exit status went to init: the supervisor saw it go.
    assert again["last_exit"] == "exited"
    eventually(lambda: square(c, 4) == 16, 60, "a call is served by the restarted agent",
               step=0.1)
    served = time.monotonic() - killed
    print(f"agent restarted {restarted:.2f} s after SIGKILL; calls served again after "
          f"{served:.2f} s")
    assert still_running(old_procs) == []  # what the killed agent had started went with it

    def healthy() -> dict[str, Any] | None:
        code, report, _ = status(c)
        return report if code == 0 else None

    report = eventually(healthy, 30, "`burst status` is healthy again")
    assert report["problems"] == []
    restarts = {p["name"]: p["restarts"] for p in report["parts"]}
    assert restarts == {"nats": 0, "redis": 0, "scheduler": 0, "billing": 0, "gateway": 0,
                        "agent": 1}
    assert report["supervisor"]["running"] is True
    table = c.burst("status", check=True).stdout
    assert "1 (exited)" in table and "supervisor" in table


def test_a_killed_scheduler_comes_back_and_its_old_record_leaves(supervised: Cluster) -> None:
    c = supervised
    [old] = service_instances(c, "scheduler")
    scheduler = part(c, "scheduler")
    os.kill(scheduler["pid"], signal.SIGKILL)
    killed = time.monotonic()
    eventually(lambda: part(c, "scheduler").get("restarts") == 1, 30,
               "the supervisor restarted the scheduler")
    # The restarted scheduler writes under a new instance id; the killed one's record goes
    # once it is older than the heartbeat timeout.
    new = eventually(lambda: (s := service_instances(c, "scheduler")) and old not in s and s,
                     SERVICE_HEARTBEAT_TIMEOUT + 10, f"the killed scheduler {old} leaves")
    gone_after = time.monotonic() - killed
    assert len(new) == 1, new
    print(f"killed scheduler's record left /v1/status after {gone_after:.2f} s")
    # The timeout did it, not something sooner (its last beat may have been a while before
    # the kill on a loaded machine: a wide margin).
    assert gone_after >= SERVICE_HEARTBEAT_TIMEOUT / 3
    eventually(lambda: status(c)[0] == 0, 30, "`burst status` is healthy again")
    assert square(c, 5) == 25  # the restarted scheduler places work


def test_down_stops_every_part_including_restarted_ones(supervised: Cluster) -> None:
    c = supervised
    recorded = state(c)
    assert recorded.get("supervisor") is not None
    procs = [m for p in [*recorded["parts"], recorded["supervisor"]] for m in descendants(p)]
    pids = {m.pid for m in procs}
    assert recorded["supervisor"]["pid"] in pids
    assert {part(c, "agent")["pid"], part(c, "scheduler")["pid"]} <= pids  # restarted ones

    # A part that dies as `burst down` starts: its restart (if the supervisor gets to it)
    # is stopped too.
    os.kill(part(c, "billing")["pid"], signal.SIGKILL)
    down = c.burst("down", timeout=90)
    assert down.returncode == 0, down.stderr
    assert still_running(procs) == [], "left running after `burst down`"
    assert processes_of(c.home) == []
    assert not (c.home / "cluster.json").exists()


def test_without_supervision_a_killed_part_stays_down(unsupervised: Cluster) -> None:
    c = unsupervised
    assert state(c).get("supervisor") is None
    [old] = service_instances(c, "scheduler")
    agent, scheduler = part(c, "agent"), part(c, "scheduler")
    os.kill(agent["pid"], signal.SIGKILL)
    os.kill(scheduler["pid"], signal.SIGKILL)
    killed = time.monotonic()

    # The killed scheduler's record leaves the Services table after its heartbeat timeout.
    eventually(lambda: old not in service_instances(c, "scheduler"),
               SERVICE_HEARTBEAT_TIMEOUT + 10, f"the killed scheduler {old} leaves /v1/status")
    print(f"killed scheduler's record left /v1/status after {time.monotonic() - killed:.2f} s")
    assert service_instances(c, "scheduler") == set()
    time.sleep(max(0.0, killed + 2.0 - time.monotonic()))  # four default restart backoffs
    for before in (agent, scheduler):
        now = part(c, before["name"])
        assert now["pid"] == before["pid"] and now.get("restarts", 0) == 0
        assert not is_alive(before["pid"], before["started"])
    code, report, err = status(c)
    assert code == 1
    running = {p["name"]: p["running"] for p in report["parts"]}
    assert running["agent"] is False and running["scheduler"] is False
    assert f"agent: process {agent['pid']} is not running" in err
    assert f"scheduler: process {scheduler['pid']} is not running" in err
    table = c.burst("status").stdout
    assert "exited" in table and "Supervision is off" in table
