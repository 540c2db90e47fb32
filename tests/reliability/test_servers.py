"""The cluster's servers killed mid-load (nats-server, redis-server, the gateway), under
the shared invariant checker; and recovery from faults within bounds only the fixes can
meet.

Each server fault: the module's workload (spawned calls, a map of slow inputs, remote
calls) runs while the real process is SIGKILLed; `burst up`'s supervisor starts it again
on the same port (nats-server on the same store). Every call must still get exactly one
result, and the checker must find nothing lost, double-charged or left claimed. The
faultless pass runs once for the module.

- nats-server restarts: calls flow again within seconds of it answering (it used to take
  ~15 s: ordered consumers renewed only after missed heartbeats, live functions' input
  consumers deleted on a stale view); while it is down the gateway answers 503 with
  ``Retry-After`` at once (it answered 500 after 5 s).
- an agent is SIGKILLed while running calls: they run again within its heartbeat timeout
  plus a margin, in as many containers as before (AckWait is a minute here: they used
  to wait for it, then run one after the other).
- a map of inputs that kill their container on every attempt ends within one input's
  retry sequence plus 10 s (the reconcile interval is 5 s here: one container per pass,
  as before, could not).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BURST, REPO, Cluster, running_cluster
from tests.e2e.test_hello import write_app
from tests.reliability import workload
from tests.reliability.test_agents import Agents, wait_agents_live
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

HEARTBEAT_TIMEOUT = 2.0
FAULT_TIMERS = {
    "BURST_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
    "BURST_LOST_CHECK_INTERVAL": "0.25",
    # Wide: a lost agent's inputs that waited for their AckWait would miss every bound.
    "BURST_ACK_WAIT": "60",
    # Slow: replacing crashed containers one per pass would miss the poison map's bound.
    "BURST_RECONCILE_INTERVAL": "5",
    # nats-server, killed, stays down this long before the supervisor starts it again.
    "BURST_SUPERVISE_BACKOFF": "3",
    # Inputs wait in line in containers (opt-in): the crash test covers that path.
    "BURST_INPUT_PREFETCH": "4",
}


@pytest.fixture(scope="module")
def fcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, **FAULT_TIMERS)


@pytest.fixture
def agents(fcluster: Cluster, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(fcluster, tmp_path)
    yield a
    a.stop_all()


def request(c: Cluster, method: str, path: str, body: object = None,
            timeout: float = 30) -> tuple[int, dict[str, Any], Any]:
    """Status, JSON body and headers (looked up case-insensitively)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(c.profile["url"] + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {c.profile['token']}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}"), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), e.headers


def part(c: Cluster, name: str) -> dict[str, Any]:
    state = json.loads((c.home / "cluster.json").read_text())
    return next(p for p in state["parts"] if p["name"] == name)  # type: ignore[no-any-return]


def nats_part(c: Cluster) -> dict[str, Any]:
    return part(c, "nats")


def lines(path: Path) -> list[tuple[str, ...]]:
    if not path.exists():
        return []
    return [tuple(ln.split()) for ln in path.read_text().splitlines() if ln.strip()]


#: The module's workload: its map (20 inputs of 0.3 s on at most 2 containers) runs for
#: 3 s or more, so a fault struck just after the spawns lands during the map.
PLAN = dict(spawn=4, map=20, remote=2, sleep=0.2, map_sleep=0.3)
OPTIONS = "scaledown_window=2, max_containers=2"


def test_faultless_pass(fcluster: Cluster, tmp_path: Path) -> None:
    workload.deploy(fcluster, tmp_path, "servers-ok", OPTIONS)
    workload.run_checked(fcluster, "servers-ok", workload.Plan(**PLAN))  # type: ignore[arg-type]


def _killed_mid_load(c: Cluster, tmp_path: Path, name: str, victim: str) -> None:
    workload.deploy(c, tmp_path, name, OPTIONS)
    ready = tmp_path / "spawned"
    plan = workload.Plan(**PLAN, ready_file=str(ready))  # type: ignore[arg-type]
    proc = workload.start(c, name, plan)
    eventually(ready.exists, 60, "the calls spawned")
    time.sleep(0.5)  # the map is under way
    before = part(c, victim)
    os.kill(before["pid"], signal.SIGKILL)
    eventually(lambda: part(c, victim)["pid"] != before["pid"], 30,
               f"{victim} restarted by the supervisor")
    workload.run_checked(c, name, plan, proc)


def test_calls_at_the_scale_to_zero_boundary(fcluster: Cluster, tmp_path: Path) -> None:
    """Calls that arrive as the function's only container is stopped for being idle its
    whole scaledown window (1 s): spaced from well within the window to past it, each
    finds a container (the old one, or a new one) and gets exactly one result; the
    faultless twin is the module's faultless pass (calls back to back)."""
    window = 1.0
    workload.deploy(fcluster, tmp_path, "servers-edge", f"scaledown_window={window:g}")
    gaps = [window * f for f in (0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.4, 2.0)]
    # How many containers it took depends on the machine's pace (6 of 10 calls found a
    # new one here); what must hold does not: the checker's invariants.
    workload.run_checked(fcluster, "servers-edge", workload.Plan(
        spawn=0, map=0, remote=len(gaps), gaps=gaps))


def test_nats_server_sigkilled_mid_load(fcluster: Cluster, tmp_path: Path) -> None:
    _killed_mid_load(fcluster, tmp_path, "servers-nats", "nats")


def test_redis_server_sigkilled_mid_load(fcluster: Cluster, tmp_path: Path) -> None:
    _killed_mid_load(fcluster, tmp_path, "servers-redis", "redis")


def test_gateway_sigkilled_during_a_map(fcluster: Cluster, tmp_path: Path) -> None:
    _killed_mid_load(fcluster, tmp_path, "servers-gateway", "gateway")


def nats_healthy(c: Cluster) -> bool:
    url = f"http://127.0.0.1:{nats_part(c)['ports']['monitor']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


WARM_APP = """
    import burst

    app = burst.App("natsfault")

    @app.function(scaledown_window=600)
    def echo(x):
        return x
"""


def test_calls_flow_again_right_after_a_nats_restart(fcluster: Cluster,
                                                     tmp_path: Path) -> None:
    fcluster.burst("deploy", str(write_app(tmp_path, WARM_APP, "natsfault.py")), check=True)
    call = "/v1/apps/natsfault/functions/echo/calls?wait=10"
    for i in range(3):
        status, body, _ = request(fcluster, "POST", call, {"args": [i]})
        assert status == 200 and body["result"] == i, body
    os.kill(nats_part(fcluster)["pid"], signal.SIGKILL)  # the supervisor restarts it
    eventually(lambda: not nats_healthy(fcluster), 10, "nats-server gone")
    # Down: 503 with Retry-After at once, on every endpoint but the health check.
    t0 = time.monotonic()
    status, body, headers = request(fcluster, "POST", call, {"args": [9]})
    assert status == 503, (status, body)
    assert body["error"]["type"] == "Unavailable" and int(headers.get("Retry-After", "0")) >= 1
    status, _, headers = request(fcluster, "GET", "/v1/status")
    assert status == 503 and headers.get("Retry-After")
    assert time.monotonic() - t0 < 2.0
    eventually(lambda: nats_healthy(fcluster), 30, "nats-server back", step=0.02)
    back = time.monotonic()
    while True:
        status, body, _ = request(fcluster, "POST", call, {"args": [7]}, timeout=60)
        if status == 200:
            break
        assert status == 503 and time.monotonic() - back < 30, (status, body)
        time.sleep(0.05)
    assert body["result"] == 7
    # Issue 13's target is 2 s; the margin is for a loaded machine (it took ~15 s).
    assert time.monotonic() - back < 6.0, time.monotonic() - back
    for i in range(5):  # and they keep flowing: no consumer deleted under them
        t = time.monotonic()
        status, body, _ = request(fcluster, "POST", call, {"args": [i]})
        assert status == 200 and body["result"] == i and time.monotonic() - t < 3.0


LOSS_APP = """
    import os, time
    import burst

    app = burst.App("lossfault")

    @app.function(gpu="T4", timeout=120)
    def slow(path, i):
        cid = os.environ.get("BURST_CONTAINER_ID", "?")
        with open(path, "a") as f:
            f.write(f"start {cid} {i} {time.time()}\\n")
        # 8 s (the four run at once: four containers), and, until the test has killed
        # the agent (the file path + ".go"), on: at most 90 s. Plain 8 s calls could end
        # before the kill on a loaded machine, and there was nothing to run again.
        start = time.time()
        while time.time() < start + 8 or (
                not os.path.exists(path + ".go") and time.time() < start + 90):
            time.sleep(0.05)
        return i

    @app.local_entrypoint()
    def main():
        calls = [slow.spawn(os.environ["RUNS_FILE"], i) for i in range(4)]
        print("results:", sorted(c.get(timeout=120) for c in calls))
"""


def test_a_killed_agents_calls_run_again_within_its_heartbeat_timeout(
        fcluster: Cluster, agents: Agents, tmp_path: Path) -> None:
    agents.start("loss-victim", "T4:4")
    wait_agents_live(fcluster, "loss-victim")
    runs = tmp_path / "runs.txt"
    path = write_app(tmp_path, LOSS_APP, "lossfault.py")
    proc = subprocess.Popen([BURST, "run", str(path)], env={**fcluster.env,
                                                            "RUNS_FILE": str(runs)},
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually(lambda: len(lines(runs)) == 4, 90, "4 calls running on the victim")
        agents.start("loss-survivor", "T4:4")
        wait_agents_live(fcluster, "loss-survivor")
        time.sleep(1.0)  # running for a while: listed in the victim's heartbeats
        first = {ln[1] for ln in lines(runs)}
        assert len(first) == 4
        agents.kill("loss-victim")
        killed = time.time()
        Path(f"{runs}.go").touch()  # the victim's calls cannot answer now: end them
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "results: [0, 1, 2, 3]" in out
    again = [ln for ln in lines(runs) if ln[1] not in first]
    assert sorted(ln[2] for ln in again) == ["0", "1", "2", "3"], lines(runs)
    # All four again, in four containers (as before the loss), soon after the heartbeat
    # timeout: not after AckWait (60 s), not one after the other.
    assert len({ln[1] for ln in again}) == 4, again
    late = max(float(ln[3]) for ln in again) - killed
    assert late < HEARTBEAT_TIMEOUT + 2.0 + 4.0, late  # + a margin for a loaded machine


POISON_APP = """
    import os, time
    import burst

    app = burst.App("poisonfault")

    @app.function(retries=burst.Retries(max_retries=2, initial_delay=1.0,
                                        backoff_coefficient=2.0))
    def poison(x):
        os._exit(1)  # the container dies on every attempt

    @app.local_entrypoint()
    def main():
        t0 = time.monotonic()
        results = list(poison.map(range(16), return_exceptions=True))
        took = time.monotonic() - t0
        print("failed:", sum(isinstance(r, Exception) for r in results))
        print(f"took: {took:.3f}")
"""


def test_a_map_of_poison_inputs_ends_within_one_retry_sequence(
        fcluster: Cluster, tmp_path: Path) -> None:
    path = write_app(tmp_path, POISON_APP, "poisonfault.py")
    out = fcluster.burst("run", str(path), check=True, timeout=150).stdout
    assert "failed: 16" in out, out
    took = float(out.split("took: ")[1].split()[0])
    retry_sequence = 1.0 + 2.0  # the backoff delays of one input's two retries
    assert took < retry_sequence + 10.0, out  # it took 118 s (one container per pass)


MIXED_APP = """
    import os
    import burst

    app = burst.App("mixedfault")

    @app.function()
    def f(x):
        if x % 5 == 0 and x >= 200:
            os._exit(1)  # these kill their container; the others answer at once
        return x

    @app.local_entrypoint()
    def main():
        results = list(f.map(range(400), return_exceptions=True))
        wrong = [i for i, r in enumerate(results)
                 if (i % 5 == 0 and i >= 200) != isinstance(r, Exception)
                 or (not isinstance(r, Exception) and r != i)]
        print("wrong:", wrong)
"""


def test_inputs_beside_ones_that_kill_their_container_get_their_own_results(
        fcluster: Cluster, tmp_path: Path) -> None:
    """Short inputs wait in line in the containers; one that dies takes only its own
    input down: the answers sent before it died count, those in line run elsewhere."""
    path = write_app(tmp_path, MIXED_APP, "mixedfault.py")
    out = fcluster.burst("run", str(path), check=True, timeout=150).stdout
    assert "wrong: []" in out, out
