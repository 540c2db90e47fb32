"""Benchmark: a call that waits for room held by another function's idle container.

    .venv/bin/python bench/eviction.py [--mode gpu|cpu] [--samples 5]
                                       [--gpus H100:1] [--gpu-type H100]

Starts its own cluster with `burst up` (temporary BURST_HOME) whose agent has room for one
container at a time: ``--mode gpu`` declares ``--gpus`` (default ``H100:1``; ``--gpus nvml``
uses the GPUs NVML finds, e.g. on a one-H200 machine with ``--gpu-type H200``) and every
function asks for one GPU; ``--mode cpu`` gives the agent one CPU (``BURST_CPU=1``) and
every function asks for a whole one. It measures, per sample:

- cold start: ``.remote()`` of a function with zero containers on an agent with nothing
  else on it (verified), as ``bench/coldstart.py`` does;
- served by eviction: ``.remote()`` of a function with zero containers while the previous
  function's container sits idle on the only slot, kept for ``scaledown_window=600``: the
  call is served only once the scheduler evicts that container. Each sample's function is
  the next one's idle container.

The target (issue 13): the waiting call is served within its cold-start time plus 1 s.
Prints one JSON object (p50, p99, min per measurement; the eviction's p50 minus the cold
start's p50). Compare on one machine: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster  # noqa: E402
from _cluster import LocalCluster  # noqa: E402
from coldstart import containers_of, summary  # noqa: E402

#: Fast scale-down for the cold samples; heartbeats at the agent's default.
TIMERS = {"BURST_SCALEDOWN_TICK": "0.1"}

APP = '''
import burst

app = burst.App("eviction-bench")


def work():
    return 1


# Cold samples scale down within a second; the eviction chain never scales down in a run.
COLD = [app.function(scaledown_window=1, name=f"cold{i}", {resources})(work)
        for i in range({n})]
CHAIN = [app.function(scaledown_window=600, name=f"chain{i}", {resources})(work)
         for i in range({n})]
'''


def load_app(workdir: Path, n: int, resources: str) -> Any:
    text = APP.replace("{n}", str(n)).replace("{resources}", resources)
    return _cluster.load_app(workdir, "eviction_bench_app", text)


def wait_empty(client: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while containers_of(client) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"containers left after {timeout:g} s: "
                               f"{client.get_json('/v1/status')['agents']}")
        time.sleep(0.05)


def measure(mod: Any, samples: int, idle_wait: float) -> dict[str, Any]:
    from burst.client import Client

    client = Client.from_profile()
    cold = []
    for fn in mod.COLD:
        wait_empty(client)
        t0 = time.perf_counter()
        fn.remote()
        cold.append(time.perf_counter() - t0)
    wait_empty(client)
    mod.CHAIN[0].remote()  # the first idle container (a cold start, not reported)
    evict = []
    for fn in mod.CHAIN[1:]:
        # The previous function's container is idle, and seen so by the scheduler.
        time.sleep(idle_wait)
        agents = client.get_json("/v1/status")["agents"]
        if [(a["containers"], a["allocations"]) for a in agents] != [(1, 1)]:
            raise RuntimeError(f"expected one (idle) container before the call: {agents}")
        t0 = time.perf_counter()
        fn.remote()
        evict.append(time.perf_counter() - t0)
    # The first cold sample also starts the zygote (once per agent): reported apart.
    cold_s = {**summary(cold[1:]), "first_ms": round(cold[0] * 1000, 1)}
    evict_s = summary(evict)
    over = round(evict_s["p50_ms"] - cold_s["p50_ms"], 1)
    return {"cold_start": cold_s, "served_by_eviction": evict_s,
            "eviction_p50_minus_cold_p50_ms": over,
            "target": "served within cold start + 1000 ms", "met": over <= 1000.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--gpus", default="H100:1",
                    help="declared GPU inventory for --mode gpu ('nvml': what NVML finds)")
    ap.add_argument("--gpu-type", default="H100", help="the GPU the functions ask for")
    ap.add_argument("--idle-wait", type=float, default=3.0,
                    help="seconds a container stays idle before the next call (> heartbeat)")
    args = ap.parse_args()
    if args.samples < 1:
        sys.exit(f"--samples must be at least 1, not {args.samples}")
    up_args: list[str] = []
    settings = dict(TIMERS)
    if args.mode == "gpu":
        resources = f"gpu={args.gpu_type!r}"
        if args.gpus != "nvml":
            up_args = ["--gpus", args.gpus]
    else:
        resources = "cpu=1.0"
        settings["BURST_CPU"] = "1"
    work = Path(tempfile.mkdtemp(prefix="burst-bench-app-"))
    result: dict[str, Any] = {"benchmark": "eviction", "mode": args.mode,
                              "gpus": args.gpus if args.mode == "gpu" else "",
                              "samples": args.samples}
    try:
        with LocalCluster("burst-bench-", *up_args, **settings):
            mod = load_app(work, args.samples + 1, resources)
            with mod.app.run(show_output=False):
                result.update(measure(mod, args.samples, args.idle_wait))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
