"""Benchmark: a warm web endpoint, beside the same app served directly and behind Ray Serve.

    .venv/bin/python bench/web.py [--samples 300] [--seconds 6] [--clients 32] [--rounds 3]

One FastAPI app answering ``GET /ping`` with a small JSON body, served three ways on this
machine, in turns:
- through Burst: an ``@burst.asgi_app`` (``@burst.concurrent(max_inputs=64)``) of a
  cluster started with `burst up` (temporary BURST_HOME), warm;
- the floor: the same app under one uvicorn worker;
- Ray Serve (``ray[serve]``, a benchmark-only dependency: ``pip install ".[bench]"``),
  one replica; reported as skipped when Ray is not installed.
All three run at once and are measured in turns (``--rounds``, rotating the order), so
the load of a shared machine falls on each alike. For each: p50/p99 latency of
sequential requests (one keep-alive connection), and requests per second with
``--clients`` concurrent clients (one keep-alive connection each) for ``--seconds`` in
all. Prints one JSON object with the ratios to the floor and to Ray Serve. Compare
ratios, not absolute times: these machines are shared and noisy.
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


def sequential(client: httpx.Client, url: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        client.get(url).raise_for_status()
        times.append((time.perf_counter() - t) * 1000)
    return times


async def _throughput(url: str, clients: int, seconds: float) -> tuple[int, float, int]:
    """(answered, seconds, errors) of ``clients`` concurrent keep-alive clients."""
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
    return done, elapsed, errors


def measure_in_turns(urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Every system measured in each of ``args.rounds`` rounds, in a rotating order, so
    that the machine's load (shared, noisy) falls on all of them alike."""
    lat: dict[str, list[float]] = {k: [] for k in urls}
    tput: dict[str, list[float]] = {k: [0, 0.0, 0] for k in urls}
    clients = {k: httpx.Client(timeout=60) for k in urls}
    try:
        for k, url in urls.items():  # warm-up: connections, the apps' first requests
            sequential(clients[k], url, 20)
        order = list(urls)
        for r in range(args.rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                lat[k] += sequential(clients[k], urls[k], max(1, args.samples // args.rounds))
                done, elapsed, errors = asyncio.run(_throughput(
                    urls[k], args.clients, args.seconds / args.rounds))
                tput[k][0] += done
                tput[k][1] += elapsed
                tput[k][2] += errors
    finally:
        for c in clients.values():
            c.close()
    return {k: {"sequential": {"p50_ms": round(statistics.median(lat[k]), 3),
                               "p99_ms": round(pct(lat[k], 99), 3), "samples": len(lat[k])},
                "concurrent": {"rps": round(tput[k][0] / tput[k][1], 1),
                               "errors": int(tput[k][2]), "clients": args.clients}}
            for k in urls}


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


def start_floor(src: Path) -> tuple[str, subprocess.Popen[Any]]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "uvicorn"), "ping_app:web", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], cwd=src)
    url = f"http://127.0.0.1:{port}/ping"
    wait_http(url, proc)
    return url, proc


def start_ray_serve(src: Path) -> tuple[str, subprocess.Popen[Any]] | None:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    (src / "ray_app.py").write_text(textwrap.dedent(RAY_APP))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(src)}
    code = (f"import ray; from ray import serve; ray.init(num_cpus={os.cpu_count()}, "
            "include_dashboard=False, log_to_driver=False); "
            f"serve.start(http_options={{'host': '127.0.0.1', 'port': {port}}}); "
            "exec(open('ray_app.py').read())")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=src, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/ping"
    wait_http(url, proc, timeout=300)
    return url, proc


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def deploy_burst(src: Path) -> tuple[str, float]:
    """The endpoint's URL, and the first request's time (from zero containers)."""
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
    return url, (time.perf_counter() - t) * 1000


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    src = Path(tempfile.mkdtemp(prefix="burst-webbench-"))
    (src / "ping_app.py").write_text(textwrap.dedent(PING_APP))
    out: dict[str, Any] = {"benchmark": "web", "cpus": os.cpu_count()}
    procs: list[subprocess.Popen[Any]] = []
    try:
        with LocalCluster("burst-webbench-"):
            burst_url, cold_ms = deploy_burst(src)
            floor_url, floor_proc = start_floor(src)
            procs.append(floor_proc)
            urls = {"burst": burst_url, "floor_uvicorn": floor_url}
            ray = start_ray_serve(src)
            if ray is not None:
                urls["ray_serve"] = ray[0]
                procs.append(ray[1])
            out.update(measure_in_turns(urls, args))
            out["burst"]["first_request_from_zero_ms"] = round(cold_ms, 1)
    finally:
        for proc in procs:
            stop(proc)
        if len(procs) > 1:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)
    if "ray_serve" not in out:
        out["ray_serve"] = {"skipped": "ray[serve] is not installed (pip install '.[bench]')"}
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
