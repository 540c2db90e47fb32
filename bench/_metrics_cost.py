"""What `/metrics` costs: warm `.remote()` p50 and map throughput of a cluster with
metrics on (agents keep and publish their figures every BURST_METRICS_INTERVAL, the
default; `/metrics` scraped every SCRAPE seconds) beside one with them off
(BURST_METRICS=0), both running at once and measured in interleaved pairs (the order
swapped every pair), so that the machine's noise falls on both alike.

Used by bench/invoke.py (warm p50) and bench/map.py (map throughput): each pair's on/off
ratio, and their median, the figure the issue's 5 % target is about.
"""

from __future__ import annotations

import json
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

#: Seconds between scrapes of the metrics-on cluster's /metrics.
SCRAPE = 2.0

APP = '''
import burst

app = burst.App("metricsbench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x
'''

#: A process per cluster, bound to it by its environment, taking one command a line.
WORKER = '''
import json, statistics, sys, time
import burst

f = burst.Function.from_name("metricsbench", "noop")
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
        print(json.dumps({"p50_ms": statistics.median(times) * 1000}), flush=True)
    else:
        t = time.perf_counter()
        out = list(f.map(range(op["n"])))
        assert out == list(range(op["n"]))
        print(json.dumps({"per_s": op["n"] / (time.perf_counter() - t)}), flush=True)
'''


class _Side:
    def __init__(self, name: str, cluster: LocalCluster) -> None:
        self.name, self.cluster = name, cluster
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], env=cluster.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {name} worker did not start")

    def ask(self, op: dict[str, Any]) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(op) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

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


def measure(pairs: int, warm_samples: int = 0, map_inputs: int = 0) -> dict[str, Any]:
    """``pairs`` interleaved on/off pairs of a warm p50 over ``warm_samples`` calls and/or
    a map of ``map_inputs``; the medians and the median of the pairs' ratios."""
    common = {"BURST_SCALEDOWN_TICK": "0.1", "BURST_HEARTBEAT_INTERVAL": "0.2"}
    with LocalCluster("burst-bench-on-", **common) as on, \
            LocalCluster("burst-bench-off-", BURST_METRICS="0", **common) as off:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "metricsbench.py").write_text(textwrap.dedent(APP))
            for c in (on, off):
                subprocess.run([*BURST, "deploy", str(Path(tmp) / "metricsbench.py")],
                               env=c.env, check=True, capture_output=True, timeout=120)
        sides = {"on": _Side("on", on), "off": _Side("off", off)}
        stop = threading.Event()
        scraper = threading.Thread(target=_scraper, args=(on, stop), daemon=True)
        scraper.start()
        rows: dict[str, dict[str, list[float]]] = {"warm_p50_ms": {"on": [], "off": []},
                                                    "map_per_s": {"on": [], "off": []}}
        try:
            for i in range(pairs):
                order = ("on", "off") if i % 2 == 0 else ("off", "on")
                for name in order:
                    if warm_samples:
                        got = sides[name].ask({"op": "warm", "n": warm_samples})
                        rows["warm_p50_ms"][name].append(got["p50_ms"])
                    if map_inputs:
                        got = sides[name].ask({"op": "map", "n": map_inputs})
                        rows["map_per_s"][name].append(got["per_s"])
        finally:
            stop.set()
            for s in sides.values():
                s.close()
    out: dict[str, Any] = {"pairs": pairs, "scrape_s": SCRAPE}
    if warm_samples:
        on_, off_ = rows["warm_p50_ms"]["on"], rows["warm_p50_ms"]["off"]
        ratios = [a / b for a, b in zip(on_, off_, strict=True)]
        out["warm_p50"] = {
            "samples_per_pair": warm_samples,
            "on_ms_median": round(statistics.median(on_), 3),
            "off_ms_median": round(statistics.median(off_), 3),
            "on_over_off_median": round(statistics.median(ratios), 4),
            "cost_pct": round((statistics.median(ratios) - 1) * 100, 2),
            "pair_ratios": [round(r, 3) for r in ratios]}
    if map_inputs:
        on_, off_ = rows["map_per_s"]["on"], rows["map_per_s"]["off"]
        ratios = [a / b for a, b in zip(on_, off_, strict=True)]
        out["map_throughput"] = {
            "inputs_per_pair": map_inputs,
            "on_per_s_median": round(statistics.median(on_), 1),
            "off_per_s_median": round(statistics.median(off_), 1),
            "on_over_off_median": round(statistics.median(ratios), 4),
            "cost_pct": round((1 - statistics.median(ratios)) * 100, 2),
            "pair_ratios": [round(r, 3) for r in ratios]}
    return out


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10, 200, 2000),
                     indent=2))
