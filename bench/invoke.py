"""Benchmark: warm and cold `.remote()` latency, beside the machine's floor, in one run.

    .venv/bin/python bench/invoke.py [--samples 300] [--cold-samples 8]

Starts its own cluster with `burst up` (temporary BURST_HOME), then measures:
- warm `.remote()` p50/p99 of a no-op function after a warm-up;
- cold start p50/p99: zero containers verified, then `.remote()` until its result;
- the floor: one uvicorn worker with one FastAPI route making one nats-py request to an
  echo responder, called with the SDK's keep-alive HTTP transport (burst._http), the
  same number of samples;
and, in two more clusters side by side (metrics on and tracing at its default, both off),
the warm p50 in interleaved pairs (``--obs-pairs``, 20; ``--obs-only`` for those alone:
see bench/_obs_cost.py); and prints one JSON object with the ratios. Compare ratios, not
absolute times: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _obs_cost as obs_cost  # noqa: E402
from _cluster import LocalCluster  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(pct(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "samples": len(ms)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = '''
import burst

app = burst.App("bench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x


@app.function(scaledown_window=1)
def cold(x=None):
    return x
'''


def containers_running(client) -> int:  # type: ignore[no-untyped-def]
    status = client.get_json("/v1/status")
    return sum(a["containers"] + a.get("allocations", 0) for a in status["agents"])


def measure_burst(samples: int, cold_samples: int, workdir: Path) -> dict[str, object]:
    sys.path.insert(0, str(workdir))
    (workdir / "bench_app.py").write_text(textwrap.dedent(APP))
    import bench_app  # type: ignore[import-not-found]

    from burst.client import Client

    client = Client.from_profile()
    out: dict[str, object] = {}
    with bench_app.app.run(show_output=False):
        for _ in range(max(20, samples // 10)):
            bench_app.noop.remote()
        warm = []
        for i in range(samples):
            t0 = time.perf_counter()
            bench_app.noop.remote(i)
            warm.append(time.perf_counter() - t0)
        out["warm_remote"] = summary(warm)
        cold = []
        for _ in range(cold_samples):
            deadline = time.monotonic() + 30
            # Only the warm `noop` container may remain: wait for `cold` to scale to zero.
            while containers_running(client) > 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            if containers_running(client) > 2:
                raise RuntimeError("cold function did not scale to zero within 30 s")
            t0 = time.perf_counter()
            bench_app.cold.remote()
            cold.append(time.perf_counter() - t0)
            time.sleep(1.2)
        out["cold_start"] = summary(cold)
    return out


def measure_floor(nats_url: str, samples: int) -> dict[str, float]:
    port = free_port()
    env = dict(os.environ)
    resp = subprocess.Popen([sys.executable, str(REPO / "bench" / "_floor.py"), "responder",
                             nats_url], stdout=subprocess.PIPE, text=True, env=env)
    srv = subprocess.Popen([sys.executable, str(REPO / "bench" / "_floor.py"), "server",
                            nats_url, str(port)], env=env)
    try:
        assert resp.stdout is not None and resp.stdout.readline().strip() == "ready"
        # The SDK's own HTTP transport, as every Burst call in these benchmarks uses.
        from burst._http import Connection

        deadline = time.monotonic() + 20
        conn = Connection("127.0.0.1", port, timeout=10)
        while time.monotonic() < deadline:
            try:
                conn.request("POST", "/echo", b"x", {})
                break
            except OSError:
                conn.close()
                time.sleep(0.1)
        headers = {"Authorization": "Bearer x", "Content-Type": "application/octet-stream"}
        for _ in range(max(20, samples // 10)):
            conn.request("POST", "/echo", b"x", headers)
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            status, _ = conn.request("POST", "/echo", b"x", headers)
            times.append(time.perf_counter() - t0)
            assert status == 200, (status, _)
        return summary(times)
    finally:
        for p in (srv, resp):
            p.terminate()
            p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--cold-samples", type=int, default=8)
    obs_cost.add_arguments(ap, "warm")
    args = ap.parse_args()
    if args.obs_only:
        print(json.dumps({"benchmark": "invoke",
                          "observability_on_vs_off": obs_cost.run(args, "warm")}, indent=2))
        return
    with LocalCluster("burst-bench-", BURST_SCALEDOWN_TICK="0.1",
                      BURST_HEARTBEAT_INTERVAL="0.2") as cluster:
        state = json.loads((cluster.home / "cluster.json").read_text())
        nats = next(p for p in state["parts"] if p["name"] == "nats")
        nats_url = f"nats://127.0.0.1:{nats['ports']['client']}"
        result: dict[str, object] = {"benchmark": "invoke"}
        result.update(measure_burst(args.samples, args.cold_samples, cluster.home))
        result["floor"] = measure_floor(nats_url, args.samples)
        warm, floor, cold = result["warm_remote"], result["floor"], result["cold_start"]
        result["ratios"] = {
            "warm_p50_over_floor_p50": round(warm["p50_ms"] / floor["p50_ms"], 2),  # type: ignore[index]
            "warm_p99_over_floor_p99": round(warm["p99_ms"] / floor["p99_ms"], 2),  # type: ignore[index]
            "cold_p50_over_warm_p50": round(cold["p50_ms"] / warm["p50_ms"], 2),  # type: ignore[index]
        }
    result["observability_on_vs_off"] = obs_cost.run(args, "warm")  # (its own clusters)
    print(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
