"""What observability costs (issue 20's figure): warm `.remote()` p50 and map throughput
of a cluster with metrics on (agents keep and publish their figures every
BURST_METRICS_INTERVAL; `/metrics` scraped every SCRAPE seconds) and tracing at its
default (on, ``BURST_TRACE_SAMPLE`` 0: no call sampled, each checked for a trace
request), beside one with both off (``BURST_METRICS=0``, ``BURST_TRACING=0``). Both run
at once and are measured in interleaved pairs (the order swapped every pair), so that the
machine's noise falls on both alike; the figure is the median of the pairs' on/off ratios.

    .venv/bin/python bench/_obs_cost.py [--pairs 20] [--warm-samples 200] [--map-inputs 2000]

Also used by bench/invoke.py (warm p50) and bench/map.py (map throughput): ``--obs-pairs``,
``--obs-only``. ``--trace-sample 1`` measures every call traced instead of the default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import BURST, LocalCluster  # noqa: E402

#: Seconds between scrapes of the "on" cluster's /metrics.
SCRAPE = 2.0
#: The issue's target: at most this cost (percent) on either figure.
TARGET_PCT = 5.0

APP = '''
import burst

app = burst.App("obsbench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x
'''

#: A process per cluster (bound to it by its environment), one command a line.
WORKER = '''
import json, statistics, sys, time
import burst

f = burst.Function.from_name("obsbench", "noop")
for _ in range(50):
    f.remote(0)
list(f.map(range(500)))
print("ready", flush=True)
for line in sys.stdin:
    op = json.loads(line)
    if op["op"] == "warm":
        times = []
        for i in range(op["n"]):
            t = time.perf_counter()
            f.remote(i)
            times.append(time.perf_counter() - t)
        print(json.dumps({"v": statistics.median(times) * 1000}), flush=True)
    else:
        t = time.perf_counter()
        assert list(f.map(range(op["n"]))) == list(range(op["n"]))
        print(json.dumps({"v": op["n"] / (time.perf_counter() - t)}), flush=True)
'''


class _Side:
    """One cluster's worker process."""

    def __init__(self, name: str, cluster: LocalCluster) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], env=cluster.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {name} worker did not start")

    def ask(self, op: str, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "n": n}) + "\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline())["v"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _scraper(cluster: LocalCluster, stop: threading.Event) -> None:
    profile = json.loads((cluster.home / "profile.json").read_text())
    req = urllib.request.Request(profile["url"] + "/metrics",
                                 headers={"Authorization": f"Bearer {profile['token']}"})
    while not stop.wait(SCRAPE):
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except OSError:
            pass


def _row(on: list[float], off: list[float], higher_is_better: bool) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    med = statistics.median(ratios)
    cost = (1 - med) if higher_is_better else (med - 1)
    return {"on_median": round(statistics.median(on), 3),
            "off_median": round(statistics.median(off), 3),
            "on_over_off_median": round(med, 4), "cost_pct": round(cost * 100, 2),
            "target_met": cost * 100 <= TARGET_PCT,
            "pair_ratios": [round(r, 3) for r in ratios]}


def measure(pairs: int, warm_samples: int = 0, map_inputs: int = 0,
            sample: str = "") -> dict[str, Any]:
    """``pairs`` interleaved pairs (metrics on and tracing at its default, or at
    ``sample``, vs both off) of a warm p50 over ``warm_samples`` calls and/or a map of
    ``map_inputs``; the medians and the median of the pairs' ratios."""
    if pairs < 1 or warm_samples < 0 or map_inputs < 0 or not (warm_samples or map_inputs):
        raise SystemExit(f"pairs={pairs}, warm_samples={warm_samples}, "
                         f"map_inputs={map_inputs}: use at least 1 pair and a warm p50 "
                         "and/or a map of at least 1")
    common = {"BURST_SCALEDOWN_TICK": "0.1", "BURST_HEARTBEAT_INTERVAL": "0.2"}
    on_settings = {"BURST_TRACE_SAMPLE": sample} if sample else {}
    load_before = os.getloadavg()
    with LocalCluster("burst-bench-obs-on-", **common, **on_settings) as on, \
            LocalCluster("burst-bench-obs-off-", BURST_METRICS="0", BURST_TRACING="0",
                         **common) as off:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "obsbench.py").write_text(textwrap.dedent(APP))
            for c in (on, off):
                subprocess.run([*BURST, "deploy", str(Path(tmp) / "obsbench.py")],
                               env=c.env, check=True, capture_output=True, timeout=120)
        sides = {"on": _Side("on", on), "off": _Side("off", off)}
        stop = threading.Event()
        threading.Thread(target=_scraper, args=(on, stop), daemon=True).start()
        rows: dict[str, dict[str, list[float]]] = {
            k: {"on": [], "off": []} for k in ("warm", "map")}
        try:
            for i in range(pairs):
                for name in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    if warm_samples:
                        rows["warm"][name].append(sides[name].ask("warm", warm_samples))
                    if map_inputs:
                        rows["map"][name].append(sides[name].ask("map", map_inputs))
        finally:
            stop.set()
            for s in sides.values():
                s.close()
    out: dict[str, Any] = {
        "pairs": pairs, "scrape_s": SCRAPE,
        "on": f"metrics on, BURST_TRACE_SAMPLE={sample or '0 (default)'}",
        "off": "BURST_METRICS=0 BURST_TRACING=0",
        "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(), "target_cost_pct": f"<= {TARGET_PCT:g}"}
    if warm_samples:
        out["warm_p50_ms"] = {"samples_per_pair": warm_samples,
                              **_row(rows["warm"]["on"], rows["warm"]["off"], False)}
    if map_inputs:
        out["map_per_s"] = {"inputs_per_pair": map_inputs,
                            **_row(rows["map"]["on"], rows["map"]["off"], True)}
    return out


def add_arguments(ap: argparse.ArgumentParser, what: str) -> None:
    """The cost options of bench/invoke.py (``what`` "warm") and bench/map.py ("map")."""
    ap.add_argument("--obs-pairs", type=int, default=20,
                    help="interleaved pairs, metrics on and tracing at its default beside "
                         "both off (0: none)")
    ap.add_argument("--obs-size", type=int, default=200 if what == "warm" else 2000,
                    help="calls per warm p50 (invoke.py) or inputs per map (map.py) of a pair")
    ap.add_argument("--obs-trace-sample", default="",
                    help="measure this BURST_TRACE_SAMPLE (e.g. 1) instead of the default")
    ap.add_argument("--obs-only", action="store_true", help="only the on/off pairs")


def run(args: argparse.Namespace, what: str) -> dict[str, Any] | None:
    """The pairs the options ask for (None: none)."""
    if args.obs_pairs <= 0:
        return None
    size = {"warm_samples" if what == "warm" else "map_inputs": args.obs_size}
    return measure(args.obs_pairs, sample=args.obs_trace_sample, **size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--warm-samples", type=int, default=200,
                    help="calls per warm p50 of a pair (0: no warm p50)")
    ap.add_argument("--map-inputs", type=int, default=2000,
                    help="inputs per map of a pair (0: no map)")
    ap.add_argument("--trace-sample", default="",
                    help="measure this BURST_TRACE_SAMPLE (e.g. 1) instead of the default")
    args = ap.parse_args()
    print(json.dumps({"benchmark": "obs_cost", **measure(
        args.pairs, args.warm_samples, args.map_inputs, args.trace_sample)}, indent=2))


if __name__ == "__main__":
    main()
