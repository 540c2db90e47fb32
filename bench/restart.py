"""How long a SIGKILLed part of `burst up` takes to come back and serve calls again.

    .venv/bin/python bench/restart.py [--part agent] [--rounds 5]

Starts its own cluster (default supervisor settings, except BURST_SUPERVISE_BACKOFF_MAX=2 so
that each round, a few seconds after the last, waits only the base backoff), deploys a
function and warms it; then, each round, SIGKILLs the part and submits a call every 50 ms
(each in its own thread) until one is answered. Prints one JSON object: per round, the
seconds from the kill until the supervisor recorded the restarted process, and until the
first answer to a call submitted after the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster  # noqa: E402

APP = '''
import burst

app = burst.App("restart-bench")


@app.function()
def square(x: int) -> int:
    return x * x
'''


def recorded(home: Path, name: str) -> dict[str, int]:
    state = json.loads((home / "cluster.json").read_text())
    return next(p for p in state["parts"] if p["name"] == name)  # type: ignore[no-any-return]


def one_round(home: Path, part: str, square: object, limit: float) -> dict[str, float]:
    before = recorded(home, part)
    answered: list[float] = []
    os.kill(before["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def call(x: int) -> None:
        try:
            square.remote(x)  # type: ignore[attr-defined]
            answered.append(time.monotonic() - killed)
        except Exception:
            pass

    restarted = None
    while (not answered or restarted is None) and time.monotonic() - killed < limit:
        if not answered:
            threading.Thread(target=call, args=(3,), daemon=True).start()
        time.sleep(0.05)
        if restarted is None and recorded(home, part)["pid"] != before["pid"]:
            restarted = time.monotonic() - killed
    return {"restarted_s": round(restarted or -1, 3),
            "served_s": round(min(answered), 3) if answered else -1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="agent",
                    choices=["agent", "scheduler", "gateway", "billing", "nats", "redis"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=float, default=60.0, help="seconds a round may take")
    args = ap.parse_args()
    with LocalCluster("burst-restart-", BURST_SUPERVISE_BACKOFF_MAX="2") as c:
        app = c.home / "restart_bench_app.py"
        app.write_text(APP)
        import subprocess

        subprocess.run([str(Path(sys.executable).parent / "burst"), "deploy", str(app)],
                       env=c.env, check=True, capture_output=True)
        import burst

        square = burst.Function.from_name("restart-bench", "square")
        rounds = []
        for _ in range(args.rounds):
            for _ in range(3):
                square.remote(2)  # warm: a live container, as before a crash
            time.sleep(3)  # past BURST_SUPERVISE_BACKOFF_MAX: the base backoff again
            rounds.append(one_round(c.home, args.part, square, args.limit))
        served = [r["served_s"] for r in rounds if r["served_s"] >= 0]
        print(json.dumps({
            "part": args.part,
            "backoff_s": 0.5,
            "rounds": rounds,
            "served_median_s": round(statistics.median(served), 3) if served else None,
            "served_max_s": max(served) if served else None,
            "not_served": sum(1 for r in rounds if r["served_s"] < 0),
        }))


if __name__ == "__main__":
    main()
