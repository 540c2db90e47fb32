"""Agents that vanish or are preempted while running a call: the call completes exactly once
on another agent.

The module runs its own `burst up` with test-sized failure timers, plus extra agent
processes (declared GPUs, so only they can run the test's functions). Each function
appends ``start <container>`` and ``done <container>`` to a file this test owns, so every
execution is counted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_hello import write_app
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

FAILURE_TIMERS = {
    "BURST_HEARTBEAT_TIMEOUT": "2",
    "BURST_LOST_CHECK_INTERVAL": "0.25",
    "BURST_ACK_WAIT": "2",
}


@pytest.fixture(scope="module")
def fcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, **FAILURE_TIMERS)


def ports(c: Cluster) -> dict[str, int]:
    state = json.loads((c.home / "cluster.json").read_text())
    return {p["name"]: p["ports"].get("client", 0) for p in state["parts"]}


class Agents:
    """Extra agent processes of the cluster, as a second machine would run them."""

    def __init__(self, c: Cluster, logs: Path) -> None:
        self.c = c
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, agent_id: str, gpus: str) -> None:
        p = ports(self.c)
        env = {**self.c.env, "BURST_AGENT_ID": agent_id, "BURST_GPUS": gpus,
               "BURST_CPU": "2", "BURST_MEMORY_MB": "4096",
               "BURST_NATS_URL": f"nats://127.0.0.1:{p['nats']}",
               "BURST_REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
               "PYTHONUNBUFFERED": "1",
               # The functions append to a file this test owns, which a sandboxed
               # container cannot write: what is tested here is placement, not isolation.
               "BURST_SANDBOX": "off"}
        with open(self.logs / f"{agent_id}.log", "wb") as out:
            self.procs[agent_id] = subprocess.Popen(
                [sys.executable, "-m", "burst_agent"], env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.logs,
                start_new_session=True,
            )

    def kill(self, agent_id: str) -> None:
        """SIGKILL: the machine is gone, nothing is released or reported."""
        self.procs[agent_id].send_signal(signal.SIGKILL)
        self.procs[agent_id].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self, agent_id: str) -> str:
        return (self.logs / f"{agent_id}.log").read_text(errors="replace")


@pytest.fixture
def agents(fcluster: Cluster, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(fcluster, tmp_path)
    yield a
    a.stop_all()


def api(c: Cluster, path: str, method: str = "GET") -> Any:
    profile = c.profile
    req = urllib.request.Request(profile["url"] + path, method=method,
                                 headers={"Authorization": f"Bearer {profile['token']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def agent_rows(c: Cluster) -> dict[str, dict[str, Any]]:
    return {a["agent_id"]: a for a in api(c, "/v1/status").get("agents") or []}




def wait_agents_live(c: Cluster, *ids: str) -> None:
    def live() -> bool:
        rows = agent_rows(c)
        return all(i in rows and rows[i].get("age") is not None and rows[i]["age"] < 1.5
                   for i in ids)

    eventually(live, 60, f"agents {ids} registered and heartbeating")


SLOW_APP = """
    import os, time
    import burst

    app = burst.App("{app}")

    @app.function(gpu="{gpu}", timeout=120)
    def slow(path, x):
        cid = os.environ.get("BURST_CONTAINER_ID", "?")
        with open(path, "a") as f:
            f.write(f"start {{cid}}\\n")
        time.sleep(5)
        with open(path, "a") as f:
            f.write(f"done {{cid}}\\n")
        return x * 2

    @app.local_entrypoint()
    def main():
        print("result:", slow.remote(os.environ["RUNS_FILE"], 21))
"""


def start_call(
    c: Cluster, tmp_path: Path, app: str, gpu: str
) -> tuple[subprocess.Popen[str], Path]:
    runs = tmp_path / "runs.txt"
    path = write_app(tmp_path, SLOW_APP.format(app=app, gpu=gpu), name=f"{app}.py")
    proc = subprocess.Popen([BURST, "run", str(path)], env={**c.env, "RUNS_FILE": str(runs)},
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, runs


def lines(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(ln.split()) for ln in path.read_text().splitlines() if ln.strip()]  # type: ignore[misc]


def running_on(agents: Agents, container_id: str, candidates: tuple[str, ...]) -> str:
    """The agent that runs ``container_id`` (from its log: every agent logs its containers)."""
    def which() -> list[str]:
        return [a for a in candidates if container_id in agents.log(a)]

    found: list[str] = eventually(which, 10, f"an agent logged {container_id}")
    assert len(found) == 1, found
    return found[0]


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"burst run did not finish:\n{out}\n{err}") from None
    assert proc.returncode == 0, f"{out}\n{err}"
    return out


async def _agent_lost_events(nats_port: int) -> list[Any]:
    import nats

    from burst_core import names
    from burst_core.schemas import AgentLostDecoder

    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    try:
        js = nc.jetstream()
        sub = await js.subscribe(names.SUBJECTS_AGENT_LOST, stream="BURST_CONTROL",
                                 ordered_consumer=True)
        events = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            events.append(AgentLostDecoder.decode(msg.data))
        return events
    finally:
        await nc.close()


def test_call_on_a_killed_agent_completes_once_elsewhere(
    fcluster: Cluster, agents: Agents, tmp_path: Path
) -> None:
    agents.start("gpu-a", "H100:1")
    agents.start("gpu-b", "H100:1")
    wait_agents_live(fcluster, "gpu-a", "gpu-b")
    proc, runs = start_call(fcluster, tmp_path, "lost", "H100")

    eventually(lambda: lines(runs), 90, "the call started")
    first_container = lines(runs)[0][1]
    victim = running_on(agents, first_container, ("gpu-a", "gpu-b"))
    killed_at = time.time()
    agents.kill(victim)

    out = finish(proc)
    assert "result: 42" in out
    runs_seen = lines(runs)
    starts = [cid for kind, cid in runs_seen if kind == "start"]
    dones = [cid for kind, cid in runs_seen if kind == "done"]
    assert len(dones) == 1, runs_seen  # completed exactly once ...
    assert dones[0] != first_container  # ... by another container ...
    assert starts == [first_container, dones[0]], runs_seen  # ... after one restart

    # The scheduler marked the victim lost and told billing which containers it had.
    events = asyncio.run(_agent_lost_events(ports(fcluster)["nats"]))
    lost = [e for e in events if e.agent_id == victim]
    assert len(lost) == 1, events
    assert first_container in lost[0].container_ids
    assert lost[0].last_heartbeat_at <= killed_at + 0.5
    assert lost[0].lost_at - lost[0].last_heartbeat_at >= 2.0


def test_call_on_a_preempted_agent_completes_once_elsewhere(
    fcluster: Cluster, agents: Agents, tmp_path: Path
) -> None:
    agents.start("spot-a", "A100-80GB:1")
    agents.start("spot-b", "A100-80GB:1")
    wait_agents_live(fcluster, "spot-a", "spot-b")
    proc, runs = start_call(fcluster, tmp_path, "preempted", "A100-80GB")

    eventually(lambda: lines(runs), 90, "the call started")
    first_container = lines(runs)[0][1]
    victim = running_on(agents, first_container, ("spot-a", "spot-b"))
    survivor = "spot-b" if victim == "spot-a" else "spot-a"
    fcluster.burst("agent", "preempt", victim, check=True)

    out = finish(proc)
    assert "result: 42" in out
    runs_seen = lines(runs)
    dones = [cid for kind, cid in runs_seen if kind == "done"]
    assert len(dones) == 1, runs_seen
    assert [cid for kind, cid in runs_seen if kind == "start"] == [first_container, dones[0]]
    # The victim drains (nothing is placed there again); the replacement ran on the other.
    listed = json.loads(fcluster.burst("agent", "list", "--json", check=True).stdout)
    by_id = {a["agent_id"]: a for a in listed["agents"]}
    assert by_id[victim]["state"] == "preempted"
    assert by_id[victim]["containers"] == [] and by_id[victim]["allocations"] == 0
    assert by_id[survivor]["state"] == "ready"
    assert dones[0] in agents.log(survivor) and dones[0] not in agents.log(victim)
    gpus = by_id[survivor]["gpus"]
    assert [(g["index"], g["type"]) for g in gpus] == [(0, "A100-80GB")]
    assert by_id[survivor]["gpus_declared"] is True
    assert "preempted" in agents.log(victim)


def test_agent_list_and_preempt_of_an_unknown_agent(fcluster: Cluster) -> None:
    table = subprocess.run([BURST, "agent", "list"], env={**fcluster.env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "local" in table and "on-demand" in table
    missing = fcluster.burst("agent", "preempt", "no-such-agent")
    assert missing.returncode == 1
    assert "agent 'no-such-agent' is not registered" in missing.stderr


PATIENT_APP = """
    import os, time, uuid
    import burst

    app = burst.App("patient")
    runs = burst.Dict.from_name("patient-runs", create_if_missing=True)

    @app.function(min_containers=2, timeout=60)
    def slow(x):
        runs[f"start:{uuid.uuid4().hex}"] = os.environ["BURST_CONTAINER_ID"]
        time.sleep(5)
        runs[f"done:{uuid.uuid4().hex}"] = os.environ["BURST_CONTAINER_ID"]
        return x * 2

    @app.local_entrypoint()
    def main():
        runs.clear()
        print("result:", slow.remote(21))
        print("runs:", sorted(k.split(":")[0] for k in runs.keys()))
"""


def test_a_call_running_past_ack_wait_is_not_redelivered(
        fcluster: Cluster, tmp_path: Path) -> None:
    # AckWait is 2 s here and the call runs 5 s while a second container idles: only the
    # agent's in-progress acks keep JetStream from handing the input to that one too.
    path = write_app(tmp_path, PATIENT_APP, name="patient.py")
    proc = subprocess.Popen([BURST, "run", str(path)], env=fcluster.env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = finish(proc)
    assert "result: 42" in out
    assert "runs: ['done', 'start']" in out, out
