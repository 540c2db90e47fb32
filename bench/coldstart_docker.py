"""Benchmark: cold starts of the Docker runtime, beside a bare `docker run --rm`, in one run.

    DOCKER_HOST=... .venv/bin/python bench/coldstart_docker.py [--samples 20]

Starts its own cluster with `burst up --runtime docker` (temporary BURST_HOME) and measures:
- cold start p50/p99: zero containers verified, then `.remote()` of a function (one function
  per sample, so each call is the first of its function) until its result; the image is
  built by a call before the samples;
- the floor: `docker run --rm -i --network none` of the same image, running
  ``python3 -c 'import sys;sys.stdout.write(sys.stdin.readline())'`` and answering a line.
Prints one JSON object. Compare ratios, not absolute times: these machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster  # noqa: E402

APP = '''
import burst

app = burst.App("coldstart-docker")


def cold(x=None):
    return x


COLD = [app.function(scaledown_window=1, name=f"cold{i}")(cold) for i in range({samples})]
'''


def summary(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    return {"p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))], 1),
            "min_ms": round(ms[0], 1), "samples": len(ms)}


def containers_of(client: Any) -> int:
    status = client.get_json("/v1/status")
    return sum(a["containers"] + a.get("allocations", 0) for a in status["agents"])


def cold_starts(mod: Any, samples: int) -> dict[str, Any]:
    from burst.client import Client

    client = Client.from_profile()
    t0 = time.perf_counter()
    mod.COLD[0].remote()  # builds the image (once per agent)
    first = time.perf_counter() - t0
    cold = []
    for fn in mod.COLD[1: samples + 1]:
        deadline = time.monotonic() + 30
        while containers_of(client) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if containers_of(client) > 0:
            raise RuntimeError("the function did not scale to zero within 30 s: "
                               f"{client.get_json('/v1/status')['agents']}")
        t0 = time.perf_counter()
        fn.remote()
        cold.append(time.perf_counter() - t0)
    return {**summary(cold), "first_with_image_build_ms": round(first * 1000, 1)}


def bare_docker_run(samples: int) -> dict[str, Any]:
    out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                          "burst-image"], capture_output=True, text=True, check=True)
    tag = out.stdout.split()[0]
    times = []
    for i in range(samples + 1):
        t0 = time.perf_counter()
        got = subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", "none", tag, "python3", "-c",
             "import sys;sys.stdout.write(sys.stdin.readline())"],
            input=b"ping\n", capture_output=True, timeout=60).stdout
        if i:
            times.append(time.perf_counter() - t0)
        assert got == b"ping\n", got
    return {**summary(times), "image": tag}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "coldstart", "runtime": "docker"}
    with LocalCluster("burst-bench-docker-", "--runtime", "docker", timeout=300,
                      BURST_SCALEDOWN_TICK="0.1", BURST_HEARTBEAT_INTERVAL="0.2"):
        work = Path(tempfile.mkdtemp(prefix="burst-bench-app-"))
        (work / "coldstart_docker_app.py").write_text(
            textwrap.dedent(APP.replace("{samples}", str(args.samples + 1))))
        sys.path.insert(0, str(work))
        mod = importlib.import_module("coldstart_docker_app")
        with mod.app.run():
            result["docker_runtime"] = cold_starts(mod, args.samples)
        result["bare_docker_run"] = bare_docker_run(args.samples)
        result["docker_p50_minus_bare_ms"] = round(
            result["docker_runtime"]["p50_ms"] - result["bare_docker_run"]["p50_ms"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
