"""Benchmark: how fast Burst recovers from faults, as JSON.

    .venv/bin/python bench/faults.py nats-restart [--rounds 3]
    .venv/bin/python bench/faults.py agent-loss [--calls 20] [--duration 3]
    .venv/bin/python bench/faults.py poison [--inputs 20]

Each mode starts its own cluster with `burst up` (temporary BURST_HOME) and prints one
JSON object:

- ``nats-restart``: a warm function answers; nats-server is SIGKILLed and `burst up`'s
  supervisor starts it again 2 s later (same port and store); measured: seconds from NATS
  answering its health check again until a ``.remote()`` returns (``recovery_s``, per
  round), and what the gateway answered while NATS was down (status, ``Retry-After``).
- ``agent-loss``: an agent runs ``--calls`` calls of ``--duration`` seconds, one
  container each; another agent joins; the first is SIGKILLed while all run; measured:
  seconds from the kill until the re-runs start and until every call is answered,
  against the heartbeat timeout, and how many containers ran the re-runs.
- ``poison``: a map of ``--inputs`` inputs whose container dies (``os._exit(1)``) on every
  attempt, with ``--retries`` retries from ``--delay`` s (doubling); measured: the map's
  wall time against one input's retry sequence (the sum of its backoff delays).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster  # noqa: E402

RESTART_APP = '''
import burst

app = burst.App("natsbench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x
'''


def _state(home: Path) -> dict[str, Any]:
    return json.loads((home / "cluster.json").read_text())  # type: ignore[no-any-return]


def _part(home: Path, name: str) -> dict[str, Any]:
    return next(p for p in _state(home)["parts"] if p["name"] == name)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def restart_nats(home: Path, while_down: Any) -> float:
    """SIGKILL nats-server, call ``while_down()`` while it is down, and wait for `burst up`'s
    supervisor to start it again (same ports, same store; BURST_SUPERVISE_BACKOFF sets how
    long it stays down). Returns the monotonic time at which it answered its health check
    again."""
    nats = _part(home, "nats")
    health = f"http://127.0.0.1:{nats['ports']['monitor']}/healthz"
    os.kill(nats["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _healthy(health):
        if time.monotonic() > deadline:
            raise RuntimeError("nats-server still answers 10 s after SIGKILL")
        time.sleep(0.02)
    while_down()
    deadline = time.monotonic() + 60
    while not _healthy(health):
        if time.monotonic() > deadline:
            raise RuntimeError("nats-server was not restarted within 60 s")
        time.sleep(0.02)
    return time.monotonic()


def _gateway_answer(url: str, token: str) -> dict[str, Any]:
    """What a call answers while NATS is down: status, Retry-After and time taken."""
    req = urllib.request.Request(
        url + "/v1/apps/natsbench/functions/noop/calls?wait=5", method="POST",
        data=b'{"args": [1]}', headers={"Authorization": f"Bearer {token}",
                                        "Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, retry_after = r.status, r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        status, retry_after = e.code, e.headers.get("Retry-After")
    return {"status": status, "retry_after": retry_after,
            "seconds": round(time.monotonic() - t0, 3)}


def nats_restart(rounds: int, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(workdir))
    (workdir / "natsbench_app.py").write_text(textwrap.dedent(RESTART_APP))
    import natsbench_app  # type: ignore[import-not-found]

    recoveries: list[float] = []
    down_answers: list[dict[str, Any]] = []
    # Down for 2 s each time: the supervisor's backoff (BURST_SUPERVISE_BACKOFF_MAX too, so
    # that the next round's restart is not doubled).
    with LocalCluster("burst-bench-", BURST_HEARTBEAT_INTERVAL="0.2",
                      BURST_SUPERVISE_BACKOFF="2", BURST_SUPERVISE_BACKOFF_MAX="2",
                      BURST_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning")) as cluster:
        profile = json.loads((cluster.home / "profile.json").read_text())
        with natsbench_app.app.run(show_output=False):
            for i in range(5):
                natsbench_app.noop.remote(i)
            for _ in range(rounds):
                back = restart_nats(cluster.home, lambda: down_answers.append(
                    _gateway_answer(profile["url"], profile["token"])))
                deadline = back + 60
                while True:
                    try:
                        if natsbench_app.noop.remote(7) == 7:
                            break
                    except Exception as e:  # refused while the cluster recovers
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"no call succeeded within 60 s: {e!r}") from e
                        time.sleep(0.05)
                recoveries.append(round(time.monotonic() - back, 3))
                # Steady again: the next round starts from warm containers.
                for i in range(5):
                    natsbench_app.noop.remote(i)
    return {"benchmark": "faults.nats_restart", "recovery_s": recoveries,
            "recovery_max_s": max(recoveries), "while_down": down_answers}


LOSS_APP = '''
import os, time
import burst

app = burst.App("lossbench")


@app.function(gpu="T4", timeout=120, scaledown_window=600)
def slow(path, i, duration):
    cid = os.environ.get("BURST_CONTAINER_ID", "?")
    with open(path, "a") as f:
        f.write(f"start {cid} {i} {time.time()}\\n")
    time.sleep(duration)
    with open(path, "a") as f:
        f.write(f"done {cid} {i} {time.time()}\\n")
    return i
'''


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split() for ln in path.read_text().splitlines() if ln.count(" ") == 3]


def _until(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def _start_agent(cluster: LocalCluster, agent_id: str, gpus: str, logs: Path
                 ) -> subprocess.Popen[bytes]:
    """Another agent process on this machine (as a second machine would run one), with a
    declared GPU inventory so that only the agents started here run the function."""
    ports = {p["name"]: p["ports"].get("client", 0) for p in _state(cluster.home)["parts"]}
    env = {**cluster.env, "BURST_AGENT_ID": agent_id, "BURST_GPUS": gpus,
           "BURST_CPU": "16", "BURST_MEMORY_MB": "16384",
           "BURST_NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
           "BURST_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
           # The function appends to a file of this benchmark's, which a sandboxed
           # container cannot write.
           "BURST_SANDBOX": "off"}
    with open(logs / f"{agent_id}.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "burst_agent"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=logs, start_new_session=True)


def _agent_live(agent_id: str) -> bool:
    from burst.client import Client

    rows = Client.from_profile().get_json("/v1/status").get("agents") or []
    return any(a["agent_id"] == agent_id and a.get("age") is not None and a["age"] < 2
               for a in rows)


def agent_loss(calls: int, duration: float, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(workdir))
    (workdir / "lossbench_app.py").write_text(textwrap.dedent(LOSS_APP))
    import lossbench_app  # type: ignore[import-not-found]

    runs = workdir / "runs.txt"
    procs: list[subprocess.Popen[bytes]] = []
    timeout = 10.0  # the scheduler's heartbeat timeout (its default), set explicitly
    with LocalCluster("burst-bench-", BURST_HEARTBEAT_TIMEOUT=str(timeout),
                      BURST_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning")) as cluster:
        try:
            victim = _start_agent(cluster, "victim", f"T4:{calls}", cluster.home / "logs")
            procs.append(victim)
            _until(lambda: _agent_live("victim"), 60, "the victim agent registered")
            with lossbench_app.app.run(show_output=False):
                handles = [lossbench_app.slow.spawn(str(runs), i, duration)
                           for i in range(calls)]
                _until(lambda: len({ln[2] for ln in _lines(runs) if ln[0] == "start"})
                       >= calls, 120, "every call started")
                before = {ln[1] for ln in _lines(runs) if ln[0] == "start"}
                time.sleep(2.5)  # running for a while: listed in the agent's heartbeats
                procs.append(_start_agent(cluster, "survivor", f"T4:{calls}",
                                          cluster.home / "logs"))
                _until(lambda: _agent_live("survivor"), 60, "the survivor agent registered")
                victim.send_signal(signal.SIGKILL)
                killed = time.time()
                victim.wait(10)
                results = [h.get(timeout=180) for h in handles]
                assert sorted(results) == list(range(calls)), results
                answered = time.time() - killed
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert not [ln for ln in _lines(runs) if ln[0] == "done" and float(ln[3]) < killed], \
        "calls ended before the kill: make --duration longer"
    reruns = [ln for ln in _lines(runs) if ln[0] == "start" and float(ln[3]) > killed]
    rerun_containers = {ln[1] for ln in reruns}
    first_rerun = min(float(ln[3]) for ln in reruns) - killed
    last_rerun = max(float(ln[3]) for ln in reruns) - killed
    return {"benchmark": "faults.agent_loss", "calls": calls, "duration_s": duration,
            "heartbeat_timeout_s": timeout,
            "containers_before": len(before), "rerun_containers": len(rerun_containers),
            "reruns": len(reruns),
            "first_rerun_after_kill_s": round(first_rerun, 3),
            "last_rerun_after_kill_s": round(last_rerun, 3),
            "all_answered_after_kill_s": round(answered, 3)}


POISON_APP = '''
import os
import burst

app = burst.App("poisonbench")


@app.function(retries=burst.Retries(max_retries={retries}, initial_delay={delay},
                                    backoff_coefficient=2.0))
def poison(x):
    os._exit(1)  # the container dies on every attempt
'''


def poison(inputs: int, retries: int, delay: float, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(workdir))
    (workdir / "poisonbench_app.py").write_text(
        textwrap.dedent(POISON_APP).format(retries=retries, delay=delay))
    import poisonbench_app  # type: ignore[import-not-found]

    sequence = sum(min(60.0, delay * 2.0 ** k) for k in range(retries))
    with LocalCluster("burst-bench-",
                      BURST_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning")):
        with poisonbench_app.app.run(show_output=False):
            t0 = time.monotonic()
            results = list(poisonbench_app.poison.map(range(inputs), return_exceptions=True))
            took = time.monotonic() - t0
    assert len(results) == inputs and all(isinstance(r, Exception) for r in results), results
    return {"benchmark": "faults.poison", "inputs": inputs, "retries": retries,
            "retry_delays_s": round(sequence, 3), "map_s": round(took, 3),
            "over_one_retry_sequence_s": round(took - sequence, 3),
            "error": str(results[0])[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    nr = sub.add_parser("nats-restart")
    nr.add_argument("--rounds", type=int, default=3)
    al = sub.add_parser("agent-loss")
    al.add_argument("--calls", type=int, default=16)
    al.add_argument("--duration", type=float, default=20.0)
    po = sub.add_parser("poison")
    po.add_argument("--inputs", type=int, default=20)
    po.add_argument("--retries", type=int, default=2)
    po.add_argument("--delay", type=float, default=1.0)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "nats-restart":
            result = nats_restart(args.rounds, Path(tmp))
        elif args.mode == "agent-loss":
            result = agent_loss(args.calls, args.duration, Path(tmp))
        else:
            result = poison(args.inputs, args.retries, args.delay, Path(tmp))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
