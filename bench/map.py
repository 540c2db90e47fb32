"""Benchmark: Burst's map throughput and warm latency beside Ray, Celery and the floor.

    .venv/bin/pip install "ray[default]" celery     # benchmark-only dependencies
    .venv/bin/python bench/map.py [--inputs 10000] [--samples 300] [--rounds 3]

All measured in one run on this machine, printed as one JSON object:
- 10,000 no-op inputs through Burst's ``.map`` (throughput, inputs/s), from the client and
  from inside a container (a function mapping them over another; its ratio to the
  client's rate: target >= 0.8);
- 10,000 no-op ``@ray.remote`` tasks submitted at once and gathered (Ray, 2 CPUs);
- warm ``.remote()`` p50 beside the floor (one FastAPI route + one NATS request, as in
  bench/invoke.py), Ray's no-op task round trip and Celery's (Redis broker) no-op round trip;
- the ratios. Compare ratios, not absolute times: these machines are shared and noisy;
- where the CPU goes: CPU milliseconds per input of each of Burst's processes (gateway,
  scheduler, billing, agent, its containers, nats, redis, the client) over its map rounds,
  beside Ray's (its processes and the driver) over its rounds (``cpu_ms_per_input``);
- a ``--big-inputs`` map (100,000 by default; 0 skips it) after the rounds, its rate beside
  the rounds' rate, the client's memory before, at its peak and after each map, and each
  service's resident memory after it;
- map throughput with metrics on and tracing at its default beside both off, in two more
  clusters side by side, in interleaved pairs (``--obs-pairs``, 20; ``--obs-only`` for
  those alone: see bench/_obs_cost.py).

Everything runs side by side and is measured in turns, so a slow minute on a shared machine
falls on all of them alike: each of ``--rounds`` rounds runs Burst's map and Ray's (who goes
first alternates), then blocks of warm calls of each system in turn. Throughput is the
inputs of all rounds over their time; the p50s are over all samples; the per-round map
ratios are listed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _obs_cost as obs_cost  # noqa: E402
from _cluster import LocalCluster  # noqa: E402
from _cpu import ClusterCpu, PeakRss, cpu_seconds, descendants  # noqa: E402
from invoke import BIN, REPO, free_port, summary  # noqa: E402

APP = '''
import burst

app = burst.App("mapbench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x


@app.function(scaledown_window=600, timeout=600)
def fan_out(n):
    """The in-container map: n no-ops mapped from inside a container, timed there."""
    import time

    t0 = time.perf_counter()
    ok = all(a == b for a, b in zip(noop.map(range(n)), range(n), strict=True))
    return time.perf_counter() - t0, ok
'''

CELERY_APP = '''
from celery import Celery

app = Celery("bench", broker="{url}", backend="{url}")
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, result_expires=600)


@app.task
def noop(x=None):
    return x
'''


class Floor:
    """The floor's two processes (bench/_floor.py) and a keep-alive connection to them."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url

    def __enter__(self) -> Floor:
        port = free_port()
        script = str(REPO / "bench" / "_floor.py")
        self.resp = subprocess.Popen([sys.executable, script, "responder", self.nats_url],
                                     stdout=subprocess.PIPE, text=True)
        self.srv = subprocess.Popen([sys.executable, script, "server", self.nats_url, str(port)])
        assert self.resp.stdout is not None and self.resp.stdout.readline().strip() == "ready"
        from burst._http import Connection

        self.conn = Connection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.conn.request("POST", "/echo", b"x", {})
                break
            except OSError:
                self.conn.close()
                time.sleep(0.1)
        self.headers = {"Authorization": "Bearer x", "Content-Type": "application/octet-stream"}
        return self

    def call(self, _: int) -> None:
        try:
            status, body = self.conn.request("POST", "/echo", b"x", self.headers)
        except OSError:  # uvicorn closed the idle keep-alive connection: once more
            self.conn.close()
            status, body = self.conn.request("POST", "/echo", b"x", self.headers)
        assert status == 200, (status, body)

    def __exit__(self, *_: object) -> None:
        for p in (self.srv, self.resp):
            p.terminate()
            p.wait(10)


class CeleryWorker:
    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url, self.workdir = redis_url, workdir

    def __enter__(self) -> CeleryWorker:
        (self.workdir / "celery_bench.py").write_text(
            textwrap.dedent(CELERY_APP.format(url=self.redis_url)))
        env = dict(os.environ, PYTHONPATH=str(self.workdir))
        self.worker = subprocess.Popen(
            [str(BIN / "celery"), "-A", "celery_bench", "worker", "--concurrency=2",
             "--loglevel=WARNING", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sys.path.insert(0, str(self.workdir))
        import celery_bench  # type: ignore[import-not-found]

        self.app = celery_bench
        celery_bench.noop.delay().get(timeout=60)  # the worker is up
        return self

    def call(self, i: int) -> None:
        self.app.noop.delay(i).get(timeout=10)

    def __exit__(self, *_: object) -> None:
        self.worker.terminate()
        self.worker.wait(30)


class Ray:
    def __enter__(self) -> Ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)

        @ray.remote
        def noop(x=None):  # type: ignore[no-untyped-def]
            return x

        self.ray, self.noop = ray, noop
        return self

    def map(self, inputs: int) -> list[object]:
        return self.ray.get([self.noop.remote(i) for i in range(inputs)])  # type: ignore[no-any-return]

    def call(self, i: int) -> None:
        self.ray.get(self.noop.remote(i))

    def __exit__(self, *_: object) -> None:
        self.ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-inputs", type=int, default=100_000,
                    help="inputs of the one large Burst map after the rounds (0: none)")
    ap.add_argument("--setting", action="append", default=[], metavar="BURST_NAME=VALUE",
                    help="a setting of the benchmark's cluster (repeatable), e.g. "
                         "BURST_INPUT_PREFETCH=4 to let inputs wait in line in containers")
    obs_cost.add_arguments(ap, "map")
    args = ap.parse_args()
    if args.obs_only:
        print(json.dumps({"benchmark": "map",
                          "observability_on_vs_off": obs_cost.run(args, "map")}, indent=2))
        return
    settings = dict(s.split("=", 1) for s in args.setting if "=" in s)
    bad = [s for s in args.setting if "=" not in s or not s.startswith("BURST_")]
    if bad:
        ap.error(f"--setting {bad[0]!r}: use BURST_NAME=VALUE")
    if args.rounds < 1 or args.inputs < 1 or args.samples < args.rounds:
        ap.error("--rounds and --inputs must be at least 1, --samples at least --rounds")
    if args.big_inputs < 0:
        ap.error(f"--big-inputs {args.big_inputs}: use 0 (none) or more")
    result: dict[str, object] = {"benchmark": "map", "cpus": os.cpu_count(),
                                 "rounds": args.rounds}
    if settings:
        result["settings"] = settings
    with LocalCluster("burst-mapbench-", **settings) as cluster:
        state = json.loads((cluster.home / "cluster.json").read_text())
        ports = {p["name"]: p["ports"] for p in state["parts"]}
        nats_url = f"nats://127.0.0.1:{ports['nats']['client']}"
        redis_url = f"redis://127.0.0.1:{ports['redis']['client']}/5"
        (cluster.home / "mapbench_app.py").write_text(textwrap.dedent(APP))
        sys.path.insert(0, str(cluster.home))
        import mapbench_app  # type: ignore[import-not-found]

        noop = mapbench_app.noop
        with (mapbench_app.app.run(show_output=False), Floor(nats_url) as floor,
              CeleryWorker(redis_url, cluster.home) as celery, Ray() as ray):
            # Warm-ups: Burst's containers and Ray's workers started, every path used.
            assert list(noop.map(range(500))) == list(range(500))
            assert ray.map(500) == list(range(500))
            assert mapbench_app.fan_out.remote(500)[1]
            callers = {"burst": noop.remote, "floor": floor.call, "ray": ray.call,
                       "celery": celery.call}
            for call in callers.values():
                for i in range(20):
                    call(i)
            maps: dict[str, list[float]] = {"burst": [], "ray": [], "in_container": []}
            cpu = ClusterCpu(cluster.home)
            others = {floor.resp.pid, floor.srv.pid, celery.worker.pid}
            cpu_used: dict[str, dict[str, float]] = {"burst": {}, "ray": {}}
            client_rss: dict[str, list[float]] = {"before_mib": [], "peak_mib": []}

            def sample(name: str) -> dict[str, dict[int, float]]:
                if name == "burst":
                    return cpu.sample()
                pids = [os.getpid(), *descendants(os.getpid(), others)]
                return {"ray": {p: cpu_seconds(p) for p in pids}}

            def used(name: str, before: dict[str, dict[int, float]]) -> dict[str, float]:
                if name == "burst":
                    return cpu.since(before)
                now = sample(name)["ray"]
                return {"ray_all_processes":
                        sum(t - before["ray"].get(p, 0.0) for p, t in now.items())}
            times: dict[str, list[float]] = {k: [] for k in callers}
            runs = {"burst": lambda: list(noop.map(range(args.inputs))),
                    "ray": lambda: ray.map(args.inputs)}
            per_round = args.samples // args.rounds
            for r in range(args.rounds):
                for name in (("burst", "ray") if r % 2 == 0 else ("ray", "burst")):
                    before = sample(name)
                    with PeakRss() as rss:
                        t0 = time.perf_counter()
                        results = runs[name]()
                        maps[name].append(time.perf_counter() - t0)
                    for part, secs in used(name, before).items():
                        cpu_used[name][part] = cpu_used[name].get(part, 0.0) + secs
                    if name == "burst":
                        client_rss["before_mib"].append(rss.before)
                        client_rss["peak_mib"].append(rss.peak)
                    assert results == list(range(args.inputs)), name
                    del results
                seconds, ok = mapbench_app.fan_out.remote(args.inputs)
                assert ok, "the in-container map's results"
                maps["in_container"].append(seconds)
                block = max(1, per_round // 5)
                for b in range(0, per_round, block):
                    for name, call in callers.items():
                        call(-1)  # untimed: a connection idle meanwhile is renewed here
                        for i in range(b, min(per_round, b + block)):
                            t = time.perf_counter()
                            call(i)
                            times[name].append(time.perf_counter() - t)
            big: dict[str, object] = {}
            if args.big_inputs:
                before = cpu.sample()
                with PeakRss() as rss:
                    t0 = time.perf_counter()
                    n = 0
                    for n, value in enumerate(noop.map(range(args.big_inputs)), 1):
                        assert value == n - 1, (value, n)  # in order, none lost
                    secs = time.perf_counter() - t0
                assert n == args.big_inputs, n
                big = {"inputs": n, "seconds": round(secs, 3),
                       "per_second": round(n / secs, 1),
                       "cpu_ms_per_input": {k: round(v * 1000 / n, 3)
                                            for k, v in cpu.since(before).items()},
                       "client_rss": rss.summary(),
                       "service_rss_mib_after": cpu.rss()}

    def throughput(secs: list[float]) -> dict[str, object]:
        return {"inputs": args.inputs * len(secs), "seconds": round(sum(secs), 3),
                "per_second": round(args.inputs * len(secs) / sum(secs), 1),
                "per_round_per_second": [round(args.inputs / s, 1) for s in secs]}

    result["burst"] = {"map": throughput(maps["burst"]), "warm_remote": summary(times["burst"]),
                       "map_in_container": throughput(maps["in_container"])}
    result["ray"] = {"map": throughput(maps["ray"]), "round_trip": summary(times["ray"])}
    result["floor"] = summary(times["floor"])
    rounds_inputs = args.inputs * args.rounds
    result["cpu_ms_per_input"] = {
        name: {**{k: round(v * 1000 / rounds_inputs, 3) for k, v in parts.items()},
               "total": round(sum(parts.values()) * 1000 / rounds_inputs, 3)}
        for name, parts in cpu_used.items()}
    result["burst"]["client_rss_mib_per_round"] = {  # type: ignore[index]
        k: [round(v, 1) for v in vs] for k, vs in client_rss.items()}
    if big:
        result["burst_big_map"] = big
    result["celery"] = {"round_trip": summary(times["celery"])}
    b, r, c, f = result["burst"], result["ray"], result["celery"], result["floor"]
    result["ratios"] = {
        "map_throughput_burst_over_ray": round(b["map"]["per_second"] / r["map"]["per_second"], 2),  # type: ignore[index]
        "map_throughput_burst_over_ray_per_round": [
            round(rs / bs, 2) for bs, rs in zip(maps["burst"], maps["ray"], strict=True)],
        "map_in_container_over_client": round(
            b["map_in_container"]["per_second"] / b["map"]["per_second"], 2),  # type: ignore[index]
        "map_in_container_over_client_per_round": [
            round(bs / cs, 2) for bs, cs in zip(maps["burst"], maps["in_container"], strict=True)],
        "warm_p50_over_floor_p50": round(b["warm_remote"]["p50_ms"] / f["p50_ms"], 2),  # type: ignore[index]
        "warm_p50_over_ray_p50": round(b["warm_remote"]["p50_ms"] / r["round_trip"]["p50_ms"], 2),  # type: ignore[index]
        "warm_p50_over_celery_p50": round(
            b["warm_remote"]["p50_ms"] / c["round_trip"]["p50_ms"], 2),  # type: ignore[index]
    }
    per_round = result["ratios"]["map_throughput_burst_over_ray_per_round"]  # type: ignore[index]
    result["ratios"]["map_throughput_burst_over_ray_per_round_median"] = (  # type: ignore[index]
        statistics.median(per_round))
    if big:
        result["ratios"]["big_map_rate_over_rounds_rate"] = round(  # type: ignore[index]
            big["per_second"] / b["map"]["per_second"], 2)  # type: ignore[index, operator]
    result["targets"] = {"map_throughput_burst_over_ray": ">= 2", "warm_p50_over_floor_p50": "<= 2",
                         "map_in_container_over_client": ">= 0.8",
                         "warm_p50_over_ray_p50": "< 0.8",
                         "map_throughput_burst_over_ray_per_round":
                             ">= 2 in 9 of 10, median >= 2.5",
                         "big_map_rate_over_rounds_rate": ">= 0.9",
                         "observability_on_vs_off.map_per_s.cost_pct": "<= 5"}
    result["observability_on_vs_off"] = obs_cost.run(args, "map")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
