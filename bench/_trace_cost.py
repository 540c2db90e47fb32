"""What tracing costs when it is at its default (on, ``BURST_TRACE_SAMPLE`` 0: no call
sampled, each call checked for a trace request) beside off (``BURST_TRACING=0``): warm
`.remote()` p50 and map throughput of two clusters running at once, measured in
interleaved pairs (the order swapped every pair) so the machine's noise falls on both.
``--trace-sample`` measures a sampled share instead of the default (1: every call traced).

Used by bench/invoke.py (``--trace-pairs``) and bench/map.py (``--trace-pairs``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import BURST, LocalCluster  # noqa: E402

APP = '''
import burst

app = burst.App("tracebench")


@app.function(scaledown_window=600)
def noop(x=None):
    return x
'''

#: A process per cluster (bound to it by its environment), one command a line.
WORKER = '''
import json, statistics, sys, time
import burst

f = burst.Function.from_name("tracebench", "noop")
for _ in range(50):
    f.remote(0)
list(f.map(range(500)))
print("ready", flush=True)
for line in sys.stdin:
    op = json.loads(line)
    t0 = time.perf_counter()
    if op["op"] == "warm":
        times = []
        for i in range(op["n"]):
            t = time.perf_counter()
            f.remote(i)
            times.append(time.perf_counter() - t)
        print(json.dumps({"v": statistics.median(times) * 1000}), flush=True)
    else:
        assert list(f.map(range(op["n"]))) == list(range(op["n"]))
        print(json.dumps({"v": op["n"] / (time.perf_counter() - t0)}), flush=True)
'''


def _ask(proc: subprocess.Popen[str], op: dict[str, Any]) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(op) + "\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline())["v"])


def _row(on: list[float], off: list[float], higher_is_better: bool) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    med = statistics.median(ratios)
    cost = (1 - med) if higher_is_better else (med - 1)
    return {"on_median": round(statistics.median(on), 3),
            "off_median": round(statistics.median(off), 3),
            "on_over_off_median": round(med, 4), "cost_pct": round(cost * 100, 2),
            "pair_ratios": [round(r, 3) for r in ratios]}


def measure(pairs: int, warm_samples: int = 0, map_inputs: int = 0,
            sample: str = "") -> dict[str, Any]:
    """``pairs`` interleaved pairs (tracing at its default, or ``sample``, vs off) of a
    warm p50 over ``warm_samples`` calls and/or a map of ``map_inputs``."""
    common = {"BURST_SCALEDOWN_TICK": "0.1", "BURST_HEARTBEAT_INTERVAL": "0.2"}
    on_settings = {"BURST_TRACE_SAMPLE": sample} if sample else {}
    with LocalCluster("burst-bench-trace-on-", **common, **on_settings) as on, \
            LocalCluster("burst-bench-trace-off-", BURST_TRACING="0", **common) as off:
        procs = {}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tracebench.py").write_text(textwrap.dedent(APP))
            for name, c in (("on", on), ("off", off)):
                subprocess.run([*BURST, "deploy", str(Path(tmp) / "tracebench.py")],
                               env=c.env, check=True, capture_output=True, timeout=120)
                procs[name] = p = subprocess.Popen(
                    [sys.executable, "-c", WORKER], env=c.env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True)
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise SystemExit(f"the tracing-{name} worker did not start")
        rows: dict[str, dict[str, list[float]]] = {
            k: {"on": [], "off": []} for k in ("warm", "map")}
        try:
            for i in range(pairs):
                for name in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    if warm_samples:
                        rows["warm"][name].append(_ask(procs[name], {"op": "warm",
                                                                     "n": warm_samples}))
                    if map_inputs:
                        rows["map"][name].append(_ask(procs[name], {"op": "map",
                                                                    "n": map_inputs}))
        finally:
            for p in procs.values():
                if p.stdin is not None:
                    p.stdin.close()
                p.wait(30)
    out: dict[str, Any] = {"pairs": pairs, "on": f"BURST_TRACE_SAMPLE={sample or '0 (default)'}",
                           "off": "BURST_TRACING=0"}
    if warm_samples:
        out["warm_p50_ms"] = {"samples_per_pair": warm_samples,
                              **_row(rows["warm"]["on"], rows["warm"]["off"], False)}
    if map_inputs:
        out["map_per_s"] = {"inputs_per_pair": map_inputs,
                            **_row(rows["map"]["on"], rows["map"]["off"], True)}
    return out


def add_arguments(ap: Any, what: str) -> None:
    """The benchmark's tracing options (``what``: "warm" for invoke.py, "map" for map.py)."""
    ap.add_argument("--trace-pairs", type=int, default=10,
                    help="interleaved pairs with tracing at its default and off (0: none)")
    ap.add_argument("--trace-size", type=int, default=200 if what == "warm" else 2000,
                    help="calls per warm p50 (invoke.py) or inputs per map (map.py) of a pair")
    ap.add_argument("--trace-sample", default="",
                    help="measure this BURST_TRACE_SAMPLE (e.g. 1) instead of the default")
    ap.add_argument("--trace-only", action="store_true", help="only the tracing pairs")


def run(args: Any, what: str) -> dict[str, Any] | None:
    """The tracing pairs the options ask for (None: none)."""
    if args.trace_pairs <= 0:
        return None
    size = {"warm_samples" if what == "warm" else "map_inputs": args.trace_size}
    return measure(args.trace_pairs, sample=args.trace_sample, **size)
