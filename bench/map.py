"""Benchmark: Burst's map throughput and warm latency beside Ray, Celery and the floor.

    .venv/bin/pip install "ray[default]" celery     # benchmark-only dependencies
    .venv/bin/python bench/map.py [--inputs 10000] [--samples 300]

All measured in one run on this machine, printed as one JSON object:
- 10,000 no-op inputs through Burst's ``.map`` (throughput, inputs/s);
- 10,000 no-op ``@ray.remote`` tasks submitted at once and gathered (Ray, 2 CPUs);
- warm ``.remote()`` p50 beside the floor (one FastAPI route + one NATS request, as in
  bench/invoke.py), Ray's no-op task round trip and Celery's (Redis broker) no-op round trip;
- the ratios. Compare ratios, not absolute times: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster  # noqa: E402
from invoke import BIN, measure_floor, summary  # noqa: E402

APP = '''
import burst

app = burst.App("mapbench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x
'''

CELERY_APP = '''
from celery import Celery

app = Celery("bench", broker="{url}", backend="{url}")
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, result_expires=600)


@app.task
def noop(x=None):
    return x
'''


def measure_burst(inputs: int, samples: int, home: Path) -> dict[str, object]:
    (home / "mapbench_app.py").write_text(textwrap.dedent(APP))
    sys.path.insert(0, str(home))
    import mapbench_app  # type: ignore[import-not-found]

    out: dict[str, object] = {}
    with mapbench_app.app.run(show_output=False):
        list(mapbench_app.noop.map(range(500)))  # warm-up: containers started
        t0 = time.perf_counter()
        results = list(mapbench_app.noop.map(range(inputs)))
        elapsed = time.perf_counter() - t0
        assert results == list(range(inputs))
        out["map"] = {"inputs": inputs, "seconds": round(elapsed, 3),
                      "per_second": round(inputs / elapsed, 1)}
        for _ in range(20):
            mapbench_app.noop.remote()
        warm = []
        for i in range(samples):
            t = time.perf_counter()
            mapbench_app.noop.remote(i)
            warm.append(time.perf_counter() - t)
        out["warm_remote"] = summary(warm)
    return out


def measure_ray(inputs: int, samples: int) -> dict[str, object]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        @ray.remote
        def noop(x=None):  # type: ignore[no-untyped-def]
            return x

        ray.get([noop.remote(i) for i in range(500)])  # warm-up: workers started
        t0 = time.perf_counter()
        results = ray.get([noop.remote(i) for i in range(inputs)])
        elapsed = time.perf_counter() - t0
        assert results == list(range(inputs))
        rt = []
        for i in range(samples):
            t = time.perf_counter()
            ray.get(noop.remote(i))
            rt.append(time.perf_counter() - t)
        return {"map": {"inputs": inputs, "seconds": round(elapsed, 3),
                        "per_second": round(inputs / elapsed, 1)},
                "round_trip": summary(rt)}
    finally:
        ray.shutdown()


def measure_celery(redis_url: str, samples: int, workdir: Path) -> dict[str, object]:
    (workdir / "celery_bench.py").write_text(textwrap.dedent(CELERY_APP.format(url=redis_url)))
    env = dict(os.environ, PYTHONPATH=str(workdir))
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "celery_bench", "worker", "--concurrency=2",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.path.insert(0, str(workdir))
    try:
        import celery_bench  # type: ignore[import-not-found]

        celery_bench.noop.delay().get(timeout=60)  # the worker is up
        for _ in range(20):
            celery_bench.noop.delay().get(timeout=10)
        rt = []
        for i in range(samples):
            t = time.perf_counter()
            celery_bench.noop.delay(i).get(timeout=10)
            rt.append(time.perf_counter() - t)
        return {"round_trip": summary(rt)}
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    result: dict[str, object] = {"benchmark": "map", "cpus": os.cpu_count()}
    with LocalCluster("burst-mapbench-") as cluster:
        state = json.loads((cluster.home / "cluster.json").read_text())
        ports = {p["name"]: p["ports"] for p in state["parts"]}
        nats_url = f"nats://127.0.0.1:{ports['nats']['client']}"
        redis_url = f"redis://127.0.0.1:{ports['redis']['client']}/5"
        result["burst"] = measure_burst(args.inputs, args.samples, cluster.home)
        result["floor"] = measure_floor(nats_url, args.samples)
        result["celery"] = measure_celery(redis_url, args.samples, cluster.home)
    result["ray"] = measure_ray(args.inputs, args.samples)
    b, r, c, f = result["burst"], result["ray"], result["celery"], result["floor"]
    result["ratios"] = {
        "map_throughput_burst_over_ray": round(b["map"]["per_second"] / r["map"]["per_second"], 2),  # type: ignore[index]
        "warm_p50_over_floor_p50": round(b["warm_remote"]["p50_ms"] / f["p50_ms"], 2),  # type: ignore[index]
        "warm_p50_over_ray_p50": round(b["warm_remote"]["p50_ms"] / r["round_trip"]["p50_ms"], 2),  # type: ignore[index]
        "warm_p50_over_celery_p50": round(
            b["warm_remote"]["p50_ms"] / c["round_trip"]["p50_ms"], 2),  # type: ignore[index]
    }
    result["targets"] = {"map_throughput_burst_over_ray": ">= 2", "warm_p50_over_floor_p50": "<= 2",
                         "warm_p50_over_ray_p50": "< 1"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
