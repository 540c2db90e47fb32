"""Soak: a fixed rate of mixed calls (remote, spawn, map) for N minutes on one machine.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 12] [--map-size 8] [--warmup 60]
        [--sample 60] [--result-retention SECONDS] [--transient-result-retention SECONDS]
        [--recent-outputs N]

A local cluster of its own (`burst up` in a fresh home) gets operations at a fixed rate,
issued on schedule by a pool of client threads (a slow operation never delays the next
one's start): in turn a ``.remote()``, a ``.spawn()`` whose result is fetched at once,
and a ``.map()`` of ``--map-size`` inputs. Every result is checked. Prints one JSON
object:

- ``throughput_calls_per_s``: calls answered (a map counts its inputs) over the run;
- ``latency_s``: p50 and p99 per kind (a map's is the whole map's), and of all;
- ``errors``: how many operations failed or answered wrong (target: 0), the first few;
- ``late_starts``: operations that started more than a second behind schedule (the
  client machine could not keep the rate);
- ``rss_mb``: each process's resident memory (the cluster's parts, this client) at the
  end of the warm-up and at the end, and its growth (target: at most 10%);
- ``samples``: every ``--sample`` seconds from the end of the warm-up, each process's
  resident memory and the outputs stream's and call records' messages and bytes (from
  nats-server's monitoring endpoint), also printed to stderr as they come, so a plateau
  (or a leak) is visible; ``rss_mb`` adds each process's peak;
- ``load``: the machine's load average at the start and the end (it may be shared).

The cluster keeps results for ``--result-retention`` seconds (default: Burst's 7 days):
nats-server's memory grows with the outputs and call records it holds until they
expire, so only a run longer than the retention shows its plateau (at least 120 s: the
streams' duplicate window). Transient calls' (``.remote()``, the maps' inputs) are kept
``--transient-result-retention`` seconds (default Burst's 600 s, at most the result
retention), apart: the samples show their stream and bucket too. ``--recent-outputs``
sets the gateway's in-memory cache of recent outputs (``BURST_RECENT_OUTPUTS``), which
fills at the call rate until full.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import BURST, LocalCluster  # noqa: E402

APP = '''
import burst

app = burst.App("soak")


@app.function(scaledown_window=120, max_containers=4)
def echo(x):
    return x
'''

KINDS = ("remote", "spawn", "map")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def processes(home: Path) -> dict[str, int]:
    """The cluster's parts (from cluster.json) and this client, by name."""
    state = json.loads((home / "cluster.json").read_text())
    found = {p["name"]: int(p["pid"]) for p in state["parts"]}
    found["client"] = os.getpid()
    return found


def nats_monitor(home: Path) -> int | None:
    state = json.loads((home / "cluster.json").read_text())
    for p in state["parts"]:
        if p["name"] == "nats" and p.get("ports", {}).get("monitor"):
            return int(p["ports"]["monitor"])
    return None


def stream_state(port: int | None) -> dict[str, dict[str, int]]:
    """Messages and bytes of each JetStream stream (KV buckets are streams ``KV_*``)."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/jsz?streams=true", timeout=5) as r:
            jsz = json.loads(r.read())
    except (OSError, ValueError):
        return {}
    found = {}
    for acc in jsz.get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            found[st["name"]] = {"messages": st["state"]["messages"],
                                 "bytes": st["state"]["bytes"]}
    return found


class Sampler(threading.Thread):
    """Every ``every`` seconds: each process's RSS and the streams' sizes."""

    WATCH = ("BURST_OUTPUTS", "BURST_TRANSIENT_OUTPUTS", "KV_burst_calls",
             "KV_burst_calls_transient", "KV_burst_idempotency", "KV_burst_maps")

    def __init__(self, home: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.home, self.every = home, every
        self.port = nats_monitor(home)
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def take(self) -> None:
        procs = processes(self.home)
        streams = stream_state(self.port)
        sample = {"t_s": round(time.monotonic() - self.t0),
                  "rss_mb": {n: round(rss_mb(pid) or 0, 1) for n, pid in procs.items()},
                  "streams": {k: v for k, v in streams.items() if k in self.WATCH}}
        self.samples.append(sample)
        print(json.dumps(sample), file=sys.stderr, flush=True)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.take()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class Soak:
    def __init__(self, rate: float, map_size: int) -> None:
        import burst

        self.fn = burst.Function.from_name("soak", "echo")
        self.rate, self.map_size = rate, map_size
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.calls = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.late_starts = 0

    def one(self, n: int, due: float) -> None:
        kind = KINDS[n % len(KINDS)]
        late = time.monotonic() - due > 1.0
        t0 = time.perf_counter()
        try:
            if kind == "remote":
                ok, calls = self.fn.remote(n) == n, 1
            elif kind == "spawn":
                ok, calls = self.fn.spawn(n).get(timeout=120) == n, 1
            else:
                xs = list(range(n, n + self.map_size))
                ok, calls = list(self.fn.map(xs)) == xs, len(xs)
            error = "" if ok else f"{kind} {n}: wrong result"
        except Exception as e:
            error, calls = f"{kind} {n}: {type(e).__name__}: {e}", 0
        took = time.perf_counter() - t0
        with self.lock:
            self.late_starts += late
            if error:
                self.error_count += 1
                if len(self.errors) < 10:
                    self.errors.append(error[:300])
            else:
                self.calls += calls
                self.latency[kind].append(took)

    def run(self, seconds: float, pool: concurrent.futures.ThreadPoolExecutor) -> int:
        """Issue operations at the rate for ``seconds``; returns how many were issued."""
        start = time.monotonic()
        n = 0
        # Only the operations still running are held (a list of every future made the
        # client's own memory grow with the run's length).
        pending: set[concurrent.futures.Future[None]] = set()
        held = threading.Lock()

        def finished(f: concurrent.futures.Future[None]) -> None:
            with held:
                pending.discard(f)

        while True:
            due = start + n / self.rate
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            f = pool.submit(self.one, n, due)
            with held:
                pending.add(f)
            f.add_done_callback(finished)
            n += 1
        with held:
            left = list(pending)
        concurrent.futures.wait(left, timeout=300)
        return n

    def reset(self) -> None:
        with self.lock:
            self.latency = {k: [] for k in KINDS}
            self.calls = 0
            self.errors, self.error_count, self.late_starts = [], 0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the measured run")
    ap.add_argument("--rate", type=float, default=12.0, help="operations per second")
    ap.add_argument("--map-size", type=int, default=8, help="inputs of each map")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds at the rate before memory and latencies are measured")
    ap.add_argument("--threads", type=int, default=32, help="client threads issuing calls")
    ap.add_argument("--sample", type=float, default=60.0,
                    help="seconds between memory samples during the measured run")
    ap.add_argument("--result-retention", type=float, default=None,
                    help="seconds the cluster keeps outputs and call records "
                         "(BURST_RESULT_RETENTION; default Burst's 7 days; >= 120)")
    ap.add_argument("--transient-result-retention", type=float, default=None,
                    help="seconds the cluster keeps transient calls' outputs and records "
                         "(BURST_TRANSIENT_RESULT_RETENTION; default 600, or the result "
                         "retention if less; 120 to the result retention)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="trace this client's allocations; report the lines whose memory "
                         "grew most over the measured run")
    ap.add_argument("--recent-outputs", type=int, default=None,
                    help="outputs the gateway keeps in memory (BURST_RECENT_OUTPUTS)")
    args = ap.parse_args()
    for name in ("minutes", "rate", "warmup", "sample"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0 (got {getattr(args, name)!r})")
    if args.map_size < 1 or args.threads < 1:
        ap.error(f"--map-size and --threads must be >= 1 (got {args.map_size}, {args.threads})")
    if args.result_retention is not None and args.result_retention < 120:
        ap.error(f"--result-retention must be >= 120 s, the streams' duplicate window "
                 f"(got {args.result_retention!r})")
    full = args.result_retention if args.result_retention is not None else 7 * 86400.0
    transient = args.transient_result_retention
    if transient is not None and not 120 <= transient <= full:
        ap.error(f"--transient-result-retention must be from 120 s to the result retention "
                 f"({full:g} s) (got {transient!r})")
    if args.recent_outputs is not None and args.recent_outputs < 1:
        ap.error(f"--recent-outputs must be >= 1 (got {args.recent_outputs!r})")
    settings = {"BURST_SCALEDOWN_TICK": "0.5"}
    if args.result_retention is not None:
        settings["BURST_RESULT_RETENTION"] = str(args.result_retention)
    if transient is not None or full < 600:
        settings["BURST_TRANSIENT_RESULT_RETENTION"] = str(transient or full)
    if args.recent_outputs is not None:
        settings["BURST_RECENT_OUTPUTS"] = str(args.recent_outputs)

    load_start = os.getloadavg()
    if args.tracemalloc:
        tracemalloc.start(4)
    with LocalCluster("burst-soak-", **settings) as c:
        app = Path(c.home) / "soak_app.py"
        app.write_text(textwrap.dedent(APP))
        subprocess.run([*BURST, "deploy", str(app)], env=c.env, check=True,
                       capture_output=True, timeout=120)
        soak = Soak(args.rate, args.map_size)
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            soak.run(args.warmup, pool)
            warm_errors = soak.error_count
            soak.reset()
            procs = processes(c.home)
            rss_start = {name: rss_mb(pid) for name, pid in procs.items()}
            sampler = Sampler(c.home, args.sample)
            sampler.take()
            sampler.start()
            snap0 = tracemalloc.take_snapshot() if args.tracemalloc else None
            t0 = time.monotonic()
            issued = soak.run(args.minutes * 60, pool)
            elapsed = time.monotonic() - t0
            client_growth = None
            if snap0 is not None:
                diff = tracemalloc.take_snapshot().compare_to(snap0, "traceback")
                client_growth = [
                    {"kb": round(d.size_diff / 1024, 1), "count": d.count_diff,
                     "where": [f"{f.filename.split('/libs/')[-1]}:{f.lineno}"
                               for f in d.traceback]}
                    for d in diff[:8]]
            sampler.stop.set()
            sampler.join()
            sampler.take()
            rss_end = {name: rss_mb(pid) for name, pid in processes(c.home).items()}
            restarted = sorted(n for n, pid in processes(c.home).items()
                               if procs.get(n) != pid)
    everything = [x for k in KINDS for x in soak.latency[k]]
    growth = {n: round((rss_end[n] or 0) / s - 1, 4) for n, s in rss_start.items()
              if s and rss_end.get(n)}
    result: dict[str, Any] = {
        "minutes": args.minutes, "rate_ops_per_s": args.rate, "map_size": args.map_size,
        "operations": issued, "elapsed_s": round(elapsed, 1),
        "throughput_calls_per_s": round(soak.calls / elapsed, 2),
        "calls": soak.calls,
        "latency_s": {**{k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
                         for k, v in soak.latency.items()},
                      "all": {"p50": pct(everything, 0.5), "p99": pct(everything, 0.99)}},
        "errors": soak.error_count, "first_errors": soak.errors,
        "warmup_errors": warm_errors, "late_starts": soak.late_starts,
        "rss_mb": {n: {"start": round(rss_start[n] or 0, 1),
                       "end": round(rss_end.get(n) or 0, 1),
                       "peak": max(x["rss_mb"].get(n, 0) for x in sampler.samples),
                       "growth": growth.get(n)} for n in rss_start},
        "samples": sampler.samples,
        **({"client_growth": client_growth} if client_growth is not None else {}),
        "settings": settings,
        "restarted": restarted,
        "max_rss_growth": max(growth.values()) if growth else None,
        "targets_met": {"zero_errors": soak.error_count == 0,
                        "rss_growth_at_most_10pct": bool(growth)
                        and max(growth.values()) <= 0.10},
        "load": {"start": [round(x, 2) for x in load_start],
                 "end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()},
    }
    if result["latency_s"]["all"]["p50"] is None:
        result["note"] = "no operation succeeded"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
