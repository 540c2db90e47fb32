"""Benchmark: a warm web endpoint, beside the same app served directly and behind Ray Serve.

    .venv/bin/python bench/web.py [--samples 300] [--seconds 5] [--clients 32]

One FastAPI app answering ``GET /ping`` with a small JSON body, served three ways on this
machine, in turns:
- through Burst: an ``@burst.asgi_app`` (``@burst.concurrent(max_inputs=64)``) of a
  cluster started with `burst up` (temporary BURST_HOME), warm;
- the floor: the same app under one uvicorn worker;
- Ray Serve (``ray[serve]``, a benchmark-only dependency: ``pip install ".[bench]"``),
  one replica; reported as skipped when Ray is not installed.
For each: p50/p99 latency of sequential requests (one keep-alive connection), and
requests per second with ``--clients`` concurrent clients (one keep-alive connection
each) for ``--seconds``. Prints one JSON object with the ratios to the floor and to Ray
Serve. Compare ratios, not absolute times: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster  # noqa: E402

PING_APP = '''
from fastapi import FastAPI

web = FastAPI()


@web.get("/ping")
def ping() -> dict:
    return {"ok": True, "n": 1}
'''

BURST_APP = '''
import burst

app = burst.App("webbench")


@app.function(scaledown_window=600)
@burst.concurrent(max_inputs=64)
@burst.asgi_app()
def ping():
    from fastapi import FastAPI

    web = FastAPI()

    @web.get("/ping")
    def ping() -> dict:  # the same app as PING_APP
        return {"ok": True, "n": 1}

    return web
'''

RAY_APP = '''
import sys, time
from ray import serve
from ping_app import web


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(web)
class Ping:
    pass


serve.run(Ping.bind(), route_prefix="/")
print("ready", flush=True)
while True:
    time.sleep(3600)
'''


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sequential(url: str, samples: int) -> dict[str, float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(20):  # warm-up: the connection, the app's first requests
            client.get(url).raise_for_status()
        for _ in range(samples):
            t = time.perf_counter()
            client.get(url).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(pct(times, 99), 3),
            "samples": samples}


async def _throughput(url: str, clients: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    done = 0
    errors = 0
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get(url) for _ in range(clients)))  # warm-up
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                r = await client.get(url)
                if r.status_code == 200:
                    done += 1
                else:
                    errors += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t
    return {"rps": round(done / elapsed, 1), "errors": errors, "clients": clients}


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"sequential": sequential(url, args.samples),
            "concurrent": asyncio.run(_throughput(url, args.clients, args.seconds))}


def wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: the server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url}: not answering after {timeout} s")


def floor(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "uvicorn"), "ping_app:web", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], cwd=src)
    try:
        url = f"http://127.0.0.1:{port}/ping"
        wait_http(url, proc)
        return measure(url, args)
    finally:
        proc.terminate()
        proc.wait(10)


def ray_serve(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return {"skipped": "ray[serve] is not installed (pip install '.[bench]')"}
    port = free_port()
    (src / "ray_app.py").write_text(textwrap.dedent(RAY_APP))
    env = {**os.environ, "RAY_SERVE_HTTP_PORT": str(port), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(src)}
    code = (f"import ray; from ray import serve; ray.init(num_cpus={os.cpu_count()}, "
            "include_dashboard=False); "
            f"serve.start(http_options={{'host': '127.0.0.1', 'port': {port}}}); "
            "exec(open('ray_app.py').read())")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=src, env=env,
                            stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/ping"
        wait_http(url, proc, timeout=300)
        return measure(url, args)
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)


def burst_endpoint(src: Path, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    (src / "webbench.py").write_text(textwrap.dedent(BURST_APP))
    deploy = subprocess.run([str(BIN / "burst"), "deploy", "webbench.py"], cwd=src,
                            capture_output=True, text=True, timeout=120)
    if deploy.returncode != 0:
        sys.exit(f"burst deploy failed:\n{deploy.stdout}\n{deploy.stderr}")
    url = next(line.split(": ", 1)[1].strip() for line in deploy.stderr.splitlines()
               if "web endpoint ping:" in line) + "/ping"
    t = time.perf_counter()
    first = httpx.get(url, timeout=120)  # from zero: held while a container starts
    if first.status_code != 200:
        sys.exit(f"{url}: {first.status_code} {first.text}")
    cold_ms = (time.perf_counter() - t) * 1000
    result = measure(url, args)
    result["first_request_from_zero_ms"] = round(cold_ms, 1)
    return result, url


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=32)
    args = p.parse_args()
    src = Path(tempfile.mkdtemp(prefix="burst-webbench-"))
    (src / "ping_app.py").write_text(textwrap.dedent(PING_APP))
    out: dict[str, Any] = {"benchmark": "web", "cpus": os.cpu_count()}
    with LocalCluster("burst-webbench-") as cluster:
        out["burst"], _ = burst_endpoint(src, args)
        del cluster
    out["floor_uvicorn"] = floor(src, args)
    out["ray_serve"] = ray_serve(src, args)
    b, f, r = out["burst"], out["floor_uvicorn"], out["ray_serve"]
    out["ratios"] = {
        "p50_vs_floor": ratio(b["sequential"]["p50_ms"], f["sequential"]["p50_ms"]),
        "rps_vs_floor": ratio(b["concurrent"]["rps"], f["concurrent"]["rps"]),
    }
    if "sequential" in r:
        out["ratios"]["p50_vs_ray_serve"] = ratio(b["sequential"]["p50_ms"],
                                                  r["sequential"]["p50_ms"])
        out["ratios"]["rps_vs_ray_serve"] = ratio(b["concurrent"]["rps"], r["concurrent"]["rps"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
