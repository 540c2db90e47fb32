"""Benchmark: cold starts of the process runtime, beside a fresh interpreter, in one run.

    .venv/bin/python bench/coldstart.py [--samples 20] [--containers 100] [--hold 30]

Starts its own clusters with `burst up` (temporary BURST_HOME each) and measures:
- cold start p50/p99 of the process runtime (sandboxed; containers forked from the zygote,
  the default), and the same with ``BURST_ZYGOTE=0`` (a fresh interpreter in the sandbox per
  container): zero containers of the function verified, then `.remote()` until its result;
- the same cold start on a materialised Debian image with an apt package
  (``debian_slim().apt_install("curl")``: its own root filesystem, ``rootfs.py``), beside
  the default image in the same cluster (``--image-spare-python off``: without the image's
  python started ahead in its spare sandbox);
- the floor: ``python3 -c 'import sys;sys.stdout.write(sys.stdin.readline())'`` spawned per
  sample and answering one line over a pipe;
- 0 -> N live containers (N=100): a function with ``cpu=0.01`` and ``max_containers=N``
  gets N concurrent spawns; each call records when it started running in its container
  (a container is live once it runs its first input) and holds its container until
  ``--hold`` seconds after the first spawn, so every further input needs another
  container. Reported: when the 1st, 10th, 50th and Nth distinct containers went live,
  counted from the first spawn.
Prints one JSON object. Compare ratios, not absolute times: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cluster  # noqa: E402
from _cluster import LocalCluster  # noqa: E402

#: Fast scale-down and heartbeats, so "zero containers" is reached and seen quickly.
TIMERS = {"BURST_SCALEDOWN_TICK": "0.1", "BURST_HEARTBEAT_INTERVAL": "0.2"}

APP = '''
import os, time

import burst

app = burst.App("coldstart")


def cold(x=None):
    return x


# One function per sample: each call is the first of a function with zero containers
# (no wait for a scale-down, and no chance of a warm hit from a lagging status).
COLD = [app.function(scaledown_window=1, name=f"cold{i}")(cold) for i in range({samples})]

# The same on a materialised Debian image with an apt package (the process runtime runs
# it in the image's own root filesystem; built by the first call, reported apart).
IMAGE = burst.Image.debian_slim().apt_install("curl")
COLD_IMAGE = [app.function(scaledown_window=1, name=f"image{i}", image=IMAGE)(cold)
              for i in range({samples})]


@app.function(cpu=0.01, max_containers={containers}, scaledown_window=2, timeout=600)
def live(until):
    started = time.time()
    time.sleep(max(0.0, until - started))
    return os.environ["BURST_CONTAINER_ID"], started
'''


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(pct(ms, 99), 1),
            "min_ms": round(min(ms), 1), "samples": len(ms)}


def fresh_interpreter(samples: int) -> dict[str, Any]:
    """Spawn ``python3 -c ...`` per sample; time until its answer comes back over a pipe."""
    # The real interpreter, not a version manager's shell shim in front of it.
    python3 = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    times = []
    for i in range(samples + 2):
        t0 = time.perf_counter()
        p = subprocess.Popen([python3, "-c", "import sys;sys.stdout.write(sys.stdin.readline())"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"ping\n")
        p.stdin.flush()
        line = p.stdout.readline()
        dt = time.perf_counter() - t0
        p.wait(10)
        assert line == b"ping\n", line
        if i >= 2:  # the first two warm the page cache
            times.append(dt)
    return {**summary(times), "interpreter": os.path.realpath(python3)}


def path_python3(samples: int) -> dict[str, Any]:
    """The same, with whatever ``python3`` the PATH names (a version manager's shim, say)."""
    python3 = shutil.which("python3") or "python3"
    times = []
    for i in range(min(samples, 10) + 1):
        t0 = time.perf_counter()
        out = subprocess.run([python3, "-c", "import sys;sys.stdout.write(sys.stdin.readline())"],
                             input=b"ping\n", capture_output=True, timeout=30).stdout
        if i:
            times.append(time.perf_counter() - t0)
        assert out == b"ping\n", out
    return {**summary(times), "python3": python3}


def load_app(workdir: Path, containers: int, samples: int, tag: str) -> Any:
    text = APP.replace("{containers}", str(containers)).replace("{samples}", str(samples + 1))
    return _cluster.load_app(workdir, f"coldstart_app_{tag}", text)


def containers_of(client: Any) -> int:
    """Containers and claims on every agent (the cluster runs this benchmark's app only)."""
    status = client.get_json("/v1/status")
    return sum(a["containers"] + a.get("allocations", 0) for a in status["agents"])


def cold_starts(mod: Any, samples: int, fns: str = "COLD") -> dict[str, Any]:
    from burst.client import Client

    client = Client.from_profile()
    cold = []
    for fn in getattr(mod, fns)[: samples + 1]:
        deadline = time.monotonic() + 30
        # Zero containers, verified: the previous samples' containers have scaled down
        # too, so the machine is as quiet as it was for the first sample.
        while containers_of(client) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if containers_of(client) > 0:
            raise RuntimeError(f"the function did not scale to zero within 30 s: "
                               f"{client.get_json('/v1/status')['agents']}")
        t0 = time.perf_counter()
        fn.remote()
        cold.append(time.perf_counter() - t0)
    # The first sample also starts the zygote (once per agent): reported apart.
    return {**summary(cold[1:]), "first_ms": round(cold[0] * 1000, 1)}


def zero_to_n(mod: Any, n: int, hold: float) -> dict[str, Any]:
    from burst.client import Client

    client = Client.from_profile()
    deadline = time.monotonic() + 30
    while containers_of(client) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    # Every call holds its container until t0 + hold: calls that start later (queued
    # behind a busy container) return at once, so the test ends soon after the hold.
    calls = [mod.live.spawn(t0 + hold) for _ in range(n)]
    spawned = time.time() - t0
    first_live: dict[str, float] = {}
    for c in calls:
        cid, started = c.get(timeout=hold + 600)
        first_live[cid] = min(first_live.get(cid, started), started)
    live = sorted(t - t0 for t in first_live.values() if t < t0 + hold)

    def at(k: int) -> float | None:
        return round(live[k - 1], 3) if len(live) >= k else None

    return {"containers_requested": n, "distinct_containers": len(live),
            "hold_s": hold, "spawn_s": round(spawned, 3), "first_live_s": at(1),
            "live_10_s": at(10), "live_50_s": at(50), f"live_{n}_s": at(n),
            "note": f"only {len(live)} containers went live within the {hold:g} s hold"
            if len(live) < n else ""}


async def runtime_zero_to_n(n: int, zygote: bool) -> dict[str, Any]:
    """The runtime alone (no scheduler): N sandboxed containers (cpu=0.01) started at once,
    until each has imported its module and said Ready over its socket."""
    import asyncio
    import struct

    from burst import wire
    from burst_agent.runtimes.base import ContainerSpec
    from burst_agent.runtimes.process import ProcessRuntime
    from burst_agent.runtimes.sandbox import Sandbox

    home = Path(tempfile.mkdtemp(prefix="burst-bench-rt-", dir="/var/tmp"))
    socks = Path(tempfile.mkdtemp(prefix="burst-"))
    bundle = home / "bundle"
    bundle.mkdir()
    (bundle / "rt_app.py").write_text("def f():\n    return 1\n")
    box = Sandbox.detect("on", f"bench-{os.getpid()}", str(home))
    rt = ProcessRuntime(sandbox=box, state_dir=home / "containers", zygote=zygote)
    handles: list[Any] = []

    async def one(i: int) -> float:
        path = socks / f"c{i}.sock"
        ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while not ready.done():
                header = await r.readexactly(4)
                body = await r.readexactly(struct.unpack(">I", header)[0])
                if isinstance(wire.from_shim_decoder.decode(body), wire.Ready):
                    ready.set_result(time.perf_counter())
            await r.read()  # keep the connection until the container goes

        server = await asyncio.start_unix_server(on_connect, path=str(path))
        spec = ContainerSpec(container_id=f"bench{i}", bundle_dir=bundle, socket_path=path,
                             module="rt_app", qualname="f", cpu=0.01, memory_mb=128)
        handles.append(await rt.start(spec))
        try:
            return await asyncio.wait_for(ready, 120)
        finally:
            server.close()

    try:
        await one(n)  # warms the zygote, as an agent's first container does
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(n)))
        live = sorted(t - t0 for t in done)
    finally:
        for h in handles:
            h.signal(9)
        await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)
        await rt.aclose()  # the spare sandbox and the zygote
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(socks, ignore_errors=True)
    return {"containers": n, "first_ready_s": round(live[0], 3),
            "ready_50_s": round(live[min(49, n - 1)], 3), f"ready_{n}_s": round(live[-1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds the 0->N test keeps the containers it gets busy")
    ap.add_argument("--skip-image", action="store_true",
                    help="skip the materialised image's cold starts")
    ap.add_argument("--skip-fresh", action="store_true",
                    help="skip the BURST_ZYGOTE=0 cluster")
    ap.add_argument("--container-network", choices=["auto", "off"], default="auto",
                    help="BURST_CONTAINER_NETWORK of the clusters (off: no network, as "
                    "before containers had one)")
    ap.add_argument("--image-spare-python", choices=["on", "off"], default="on",
                    help="BURST_IMAGE_SPARE_PYTHON of the clusters (off: an image's spare "
                    "sandbox does not run its python ahead)")
    args = ap.parse_args()
    TIMERS["BURST_CONTAINER_NETWORK"] = args.container_network
    TIMERS["BURST_IMAGE_SPARE_PYTHON"] = args.image_spare_python
    work = Path(tempfile.mkdtemp(prefix="burst-bench-app-"))
    result: dict[str, Any] = {"benchmark": "coldstart", "runtime": "process"}
    result["fresh_interpreter"] = fresh_interpreter(args.samples)
    result["fresh_interpreter_path_python3"] = path_python3(args.samples)
    if os.geteuid() == 0:
        import asyncio

        result[f"runtime_zero_to_{args.containers}_ready"] = asyncio.run(
            runtime_zero_to_n(args.containers, zygote=True))
    with LocalCluster("burst-bench-", **TIMERS):
        mod = load_app(work, args.containers, args.samples, "zygote")
        with mod.app.run(show_output=False):
            result["process_cold_start"] = cold_starts(mod, args.samples)
            if not args.skip_image:
                # first_ms: the image's build (or its cache lookup) and first start.
                result["process_cold_start_debian_apt_image"] = cold_starts(
                    mod, args.samples, "COLD_IMAGE")
            result[f"zero_to_{args.containers}_live"] = zero_to_n(mod, args.containers,
                                                                   args.hold)
    if not args.skip_fresh:
        with LocalCluster("burst-bench-", BURST_ZYGOTE="0", **TIMERS):
            mod = load_app(work, args.containers, args.samples, "fresh")
            with mod.app.run(show_output=False):
                result["process_cold_start_no_zygote"] = cold_starts(mod, args.samples)
    floor = result["fresh_interpreter"]["p50_ms"]
    result["ratios"] = {
        "process_p50_over_fresh_interpreter_p50":
            round(result["process_cold_start"]["p50_ms"] / floor, 2),
    }
    if "process_cold_start_debian_apt_image" in result:
        result["ratios"]["debian_apt_image_p50_over_default_p50"] = round(
            result["process_cold_start_debian_apt_image"]["p50_ms"]
            / result["process_cold_start"]["p50_ms"], 2)
    if "process_cold_start_no_zygote" in result:
        result["ratios"]["no_zygote_p50_over_fresh_interpreter_p50"] = round(
            result["process_cold_start_no_zygote"]["p50_ms"] / floor, 2)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
