"""Agents that vanish, drain or are preempted, and calls past AckWait or their timeout:
every call still completes exactly once, under the shared invariant checker.

The module runs its own `burst up` with test-sized failure timers (AckWait 1 s), plus
extra agent processes with one declared GPU each, so only they run the workload's GPU
function. The faultless pass runs once for the module; each fault test runs the same
workload with its fault and then the checker (:mod:`tests.reliability.checker`).
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

from tests.e2e.conftest import BURST, Cluster, running_cluster
from tests.e2e.test_hello import _host_pids
from tests.reliability import workload
from tests.reliability.checker import check
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

FAILURE_TIMERS = {
    "BURST_HEARTBEAT_TIMEOUT": "2",
    "BURST_LOST_CHECK_INTERVAL": "0.25",
    # Two seconds (the "a second or two"; one second left a loaded CI machine a
    # third of a second between in-progress acks): a call ten times longer must be kept by
    # in-progress acks alone.
    "BURST_ACK_WAIT": "2",
}
#: Every app of this module: one declared H100 per extra agent, gone soon when idle.
GPU_APP = 'gpu="H100", scaledown_window=2, timeout=120'


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


def marks(path: Path) -> list[tuple[int, str, float]]:
    """The workload's ``x container time`` lines: which container ran which call."""
    if not path.exists():
        return []
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    return [(int(x), cid, float(t)) for x, cid, t in rows]


def running_on(agents: Agents, container_id: str, candidates: tuple[str, ...]) -> str:
    """The agent that runs ``container_id`` (from its log: every agent logs its containers)."""
    def which() -> list[str]:
        return [a for a in candidates if container_id in agents.log(a)]

    found: list[str] = eventually(which, 10, f"an agent logged {container_id}")
    assert len(found) == 1, found
    return found[0]


def two_agents(fcluster: Cluster, agents: Agents, prefix: str) -> tuple[str, str]:
    a, b = f"{prefix}-a", f"{prefix}-b"
    agents.start(a, "H100:1")
    agents.start(b, "H100:1")
    wait_agents_live(fcluster, a, b)
    return a, b


def test_faultless_pass(fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """The module's workload without a fault: what each fault test must still meet."""
    two_agents(fcluster, agents, "ok")
    workload.deploy(fcluster, tmp_path, "agents-ok", GPU_APP)
    res = workload.run_checked(fcluster, "agents-ok", workload.Plan(
        spawn=2, map=4, remote=1, sleep=0.2))
    assert res.summary["containers"] >= 1, res.summary


def _fault_mid_call(fcluster: Cluster, agents: Agents, tmp_path: Path, name: str,
                    fault: Any, sleep: float = 90,
                    ) -> tuple[list[tuple[int, str, float]], str, str, workload.Result]:
    """Two calls, one on each agent, held running (at most ``sleep`` seconds) until the
    fault has struck; ``fault(victim)`` strikes the agent running call 0 while it runs.
    Returns the marks, the victim and survivor, and the checked result.

    The calls end when the test creates a file, not after a fixed time: with 4 s calls,
    at load 10-24 on 2 cores, call 0 had ended before ``burst agent preempt`` (a CLI
    process) reached the agent, in 3 of 3 module runs, and there was nothing to run
    again."""
    a, b = two_agents(fcluster, agents, name)
    workload.deploy(fcluster, tmp_path, f"agents-{name}", GPU_APP)
    mark, go = tmp_path / "marks.txt", tmp_path / "go"
    plan = workload.Plan(spawn=2, map=0, remote=0, sleep=sleep, mark=str(mark), until=str(go))
    proc = workload.start(fcluster, f"agents-{name}", plan)
    eventually(lambda: len(marks(mark)) == 2, 90, "both calls running")
    first = {x: cid for x, cid, _ in marks(mark)}
    victim = running_on(agents, first[0], (a, b))
    survivor = b if victim == a else a
    time.sleep(1.0)  # running for a while: listed in the victim's heartbeats
    fault(victim)
    # Call 0 can no longer answer from the victim (its agent is gone, or it stopped the
    # container): the calls may end now.
    eventually(lambda: agents.procs[victim].poll() is not None or any(
        "container_stopped" in ln and first[0] in ln
        for ln in agents.log(victim).splitlines()), 60, f"{first[0]} stopped on {victim}")
    go.touch()
    res = workload.run_checked(fcluster, f"agents-{name}", plan, proc)
    runs = marks(mark)
    again = [(x, cid) for x, cid, _ in runs[2:]]
    # Call 0 ran once more, elsewhere; call 1 ran once.
    assert [x for x, _ in again] == [0], runs
    assert again[0][1] != first[0] and again[0][1] in agents.log(survivor), runs
    return runs, victim, survivor, res


def test_agent_sigkilled_mid_call(fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    killed: list[float] = []

    def kill(victim: str) -> None:
        agents.kill(victim)  # SIGKILL: nothing released, nothing reported
        killed.append(time.time())

    _, victim, _, res = _fault_mid_call(fcluster, agents, tmp_path, "kill", kill)
    # The scheduler marked the victim lost and billing closed its container.
    events = asyncio.run(_agent_lost_events(ports(fcluster)["nats"]))
    lost = [e for e in events if e.agent_id == victim]
    assert len(lost) == 1, events
    assert lost[0].last_heartbeat_at <= killed[0] + 0.5
    assert lost[0].lost_at - lost[0].last_heartbeat_at >= 2.0


def test_agent_preempted_mid_call(fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    def preempt(victim: str) -> None:
        fcluster.burst("agent", "preempt", victim, check=True)

    _, victim, survivor, _ = _fault_mid_call(fcluster, agents, tmp_path, "spot", preempt)
    listed = json.loads(fcluster.burst("agent", "list", "--json", check=True).stdout)
    by_id = {a["agent_id"]: a for a in listed["agents"]}
    assert by_id[victim]["state"] == "preempted"
    assert by_id[victim]["containers"] == [] and by_id[victim]["allocations"] == 0
    assert by_id[survivor]["state"] == "ready"
    assert "preempted" in agents.log(victim)


def test_agent_drained_mid_call(fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """SIGTERM: the agent stops its containers (handing their inputs back) and leaves."""
    def drain(victim: str) -> None:
        agents.procs[victim].terminate()
        agents.procs[victim].wait(30)

    _, victim, _, _ = _fault_mid_call(fcluster, agents, tmp_path, "drain", drain)
    assert agents.procs[victim].returncode == 0, agents.log(victim)[-3000:]
    assert victim not in agent_rows(fcluster)  # it left the cluster


def agent_states(c: Cluster) -> dict[str, str]:
    listed = json.loads(c.burst("agent", "list", "--json", check=True).stdout)
    return {a["agent_id"]: a["state"] for a in listed["agents"]}


def test_burst_agent_drain_lets_a_running_call_finish_there(
        fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """`burst agent drain`: the 10 s call running on the agent finishes there (one
    result, one run), calls made meanwhile land on the other agent, then it leaves."""
    a, b = two_agents(fcluster, agents, "fin")
    app = "agents-fin"
    workload.deploy(fcluster, tmp_path, app, GPU_APP)
    mark = tmp_path / "marks.txt"
    plan = workload.Plan(spawn=1, map=0, remote=0, sleep=10, mark=str(mark))
    proc = workload.start(fcluster, app, plan)
    eventually(lambda: len(marks(mark)) == 1, 90, "the call running")
    [(_, cid, started)] = marks(mark)
    victim = running_on(agents, cid, (a, b))
    survivor = b if victim == a else a
    fcluster.burst("agent", "drain", victim, check=True)
    eventually(lambda: agent_states(fcluster).get(victim) == "drained", 30,
               f"{victim} draining")
    # Calls made while it drains run on the other agent.
    later = tmp_path / "later.txt"
    more = workload.Plan(spawn=2, map=0, remote=0, sleep=0.2, mark=str(later))
    res_more = workload.finish(workload.start(fcluster, app, more))
    assert not res_more.errors, res_more.errors
    res = workload.finish(proc)
    assert not res.errors, res.errors
    # The running call finished where it ran, once, after its full 10 s.
    [accepted] = res.accepted
    assert accepted.value[2] == cid, (accepted, cid)
    assert [row[1] for row in marks(mark)] == [cid], marks(mark)
    assert {row[1] for row in marks(later)} and all(
        row[1] != cid and row[1] in agents.log(survivor) for row in marks(later)), marks(later)
    # Then the drained agent left the cluster.
    agents.procs[victim].wait(60)
    assert agents.procs[victim].returncode == 0, agents.log(victim)[-3000:]
    assert victim not in agent_states(fcluster)
    assert "agent_drain_timed_out" not in agents.log(victim)
    assert time.time() - started >= 10
    check(fcluster.home, app, ["work"], res.accepted + res_more.accepted)


def test_a_drain_past_its_timeout_interrupts_and_reruns_the_call_once(
        fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """`burst agent drain --timeout 2s` while a 20 s call runs there: at the timeout the
    call is interrupted, runs again on the other agent exactly once, and the agent leaves."""
    def drain(victim: str) -> None:
        fcluster.burst("agent", "drain", victim, "--timeout", "2s", check=True)
        agents.procs[victim].wait(60)

    runs, victim, _, _ = _fault_mid_call(fcluster, agents, tmp_path, "late-drain", drain,
                                         sleep=20)
    assert agents.procs[victim].returncode == 0, agents.log(victim)[-3000:]
    assert "agent_drain_timed_out" in agents.log(victim)
    assert victim not in agent_rows(fcluster)
    assert len(runs) == 3, runs


def test_agent_list_and_preempt_of_an_unknown_agent(fcluster: Cluster) -> None:
    table = subprocess.run([BURST, "agent", "list"], env={**fcluster.env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "local" in table and "on-demand" in table
    missing = fcluster.burst("agent", "preempt", "no-such-agent")
    assert missing.returncode == 1
    assert "agent 'no-such-agent' is not registered" in missing.stderr


def test_a_call_ten_times_ack_wait_is_not_redelivered(
        fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """AckWait is 2 s and the call runs 20 s while a second container idles on the other
    agent: only the in-progress acks keep JetStream from handing it to that one too."""
    two_agents(fcluster, agents, "patient")
    workload.deploy(fcluster, tmp_path, "agents-patient",
                    'gpu="H100", min_containers=2, timeout=120')
    eventually(lambda: sum(len(a["containers"]) for a in json.loads(fcluster.burst(
        "agent", "list", "--json", check=True).stdout)["agents"]
        if a["agent_id"].startswith("patient")) == 2, 60, "two warm containers")
    mark = tmp_path / "marks.txt"
    plan = workload.Plan(spawn=1, map=0, remote=0, sleep=20, mark=str(mark))
    proc = workload.start(fcluster, "agents-patient", plan)
    res = workload.finish(proc)
    assert not res.errors, res.errors
    assert len(marks(mark)) == 1, marks(mark)  # it ran once: never redelivered
    fcluster.burst("app", "stop", "agents-patient", check=True)  # min_containers: stop it
    # Its warm containers leave (and their pool entries and GPU claims with them) before
    # the checker looks, and before the next scenario's agents could be offered them.
    eventually(lambda: not any(
        c["function"].startswith("default.agents-patient.")
        for a in json.loads(fcluster.burst("agent", "list", "--json", check=True).stdout)[
            "agents"] for c in a["containers"]), 60, "agents-patient's containers stopped")
    check(fcluster.home, "agents-patient", ["work"], res.accepted)


def test_a_timed_out_call_leaves_no_process_and_frees_its_gpu(
        fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    """The stop of the killed container wakes the scheduler's backlog check: the timed-out
    input, answered, must have left the inputs stream by then, or a new container is
    placed for it and holds the GPU for the whole scaledown window (120 s here). Before
    the agent confirmed that ack ahead of the stop, this failed in 2 of 2 module runs."""
    a, _ = two_agents(fcluster, agents, "late")
    workload.deploy(fcluster, tmp_path, "agents-late",
                    'gpu="H100:1", scaledown_window=120, timeout=2')
    mark = tmp_path / "marks.txt"
    plan = workload.Plan(spawn=1, map=0, remote=0, sleep=60, mark=str(mark),
                         expect_error="FunctionTimeoutError")
    res = workload.finish(workload.start(fcluster, "agents-late", plan))
    assert not res.errors, res.errors
    [(_, cid, _)] = marks(mark)
    # At once, not after the scaledown window (120 s): the process is gone, its GPU free
    # (30 s: wide margins for a loaded machine, well short of the window).
    eventually(lambda: not _host_pids(cid), 30, f"{cid}'s processes gone")
    eventually(lambda: all(r["allocations"] == 0 for r in json.loads(fcluster.burst(
        "agent", "list", "--json", check=True).stdout)["agents"]
        if r["agent_id"].startswith("late")), 30, "the timed-out call's GPU released")
    # One container in all: none was placed again for the answered input.
    placed = [ln for ln in (fcluster.home / "logs" / "scheduler.log").read_text(
        errors="replace").splitlines()
        if "container_placed" in ln and "default.agents-late.work" in ln]
    assert len(placed) == 1, placed
    check(fcluster.home, "agents-late", ["work"], res.accepted)
