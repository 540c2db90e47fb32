"""Benchmark: how fast Burst recovers from faults, as JSON.

    .venv/bin/python bench/faults.py nats-restart [--rounds 3]
    .venv/bin/python bench/faults.py agent-loss [--calls 20] [--duration 3]
    .venv/bin/python bench/faults.py poison [--inputs 20]

Each mode starts its own cluster with `burst up` (temporary BURST_HOME) and prints one
JSON object:

- ``nats-restart``: a warm function answers; nats-server is stopped and started again on
  the same port and store (as a supervisor would); measured: seconds from NATS answering
  its health check again until a ``.remote()`` returns (``recovery_s``, per round), and
  what the gateway answered while NATS was down (status and ``Retry-After``).
- ``agent-loss``: a second agent runs ``--calls`` calls of ``--duration`` seconds, one
  container each; it is SIGKILLed once all have started; measured: seconds from the kill
  until every call is answered, against the heartbeat timeout, and how many containers
  ran the re-runs.
- ``poison``: a map of ``--inputs`` inputs whose container dies (``os._exit(1)``) on every
  attempt, with retries; measured: the map's wall time against one input's retry
  sequence (the sum of its backoff delays).
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


def restart_nats(home: Path, while_down: Any = None) -> float:
    """Stop nats-server, call ``while_down()`` (or wait 1 s), start it again with the same
    command line (recorded in cluster.json so `burst down` stops the new one). Returns the
    monotonic time at which it answered its health check again."""
    from burst.cli.cluster import proc_info, read_state, write_state

    nats = _part(home, "nats")
    pid = nats["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:  # our grandchild's zombie is reaped by `burst up`'s exit: poll it
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.05)
    if while_down is None:
        time.sleep(1.0)
    else:
        while_down()
    with open(nats["log"], "ab") as out:
        proc = subprocess.Popen([a.decode() for a in argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, cwd=home,
                                start_new_session=True)
    state = read_state(home)
    assert state is not None
    part = state.part("nats")
    assert part is not None
    info = proc_info(proc.pid)
    part.pid = part.pgid = proc.pid
    part.started = info.started if info else 0
    write_state(home, state)
    health = f"http://127.0.0.1:{nats['ports']['monitor']}/healthz"
    deadline = time.monotonic() + 30
    while not _healthy(health):
        if time.monotonic() > deadline:
            raise RuntimeError("nats-server did not come back within 30 s")
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
    with LocalCluster("burst-bench-", BURST_HEARTBEAT_INTERVAL="0.2",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    nr = sub.add_parser("nats-restart")
    nr.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "nats-restart":
            result = nats_restart(args.rounds, Path(tmp))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
