"""Benchmark: the gap in service while a three-node NATS cluster loses a node, as JSON.

    .venv/bin/python bench/ha.py [--kills 2] [--settle 3] [--home HOME]

Starts `burst up --nats-cluster 3` (temporary BURST_HOME), runs a loop of calls and a
loop of maps (bench/_ha_load.py), and SIGKILLs NATS nodes one at a time: first the
inputs stream's leader, then another node; `burst up`'s supervisor starts each again and
the next kill waits until every stream is current on all three. Prints one JSON object:
per kill, the node, whether it led the inputs stream, seconds until the cluster had
caught up, and ``gap_s``, the longest time in which no call of the call loop was
answered (target: under 12 s; nats-server's own election takes 4-9 s); plus the calls
and maps answered and any call that did not end with exactly one result.

With ``--home``, it runs against the cluster already up from that BURST_HOME (started with
``--nats-cluster 3`` and ``BURST_SANDBOX=off``), as tests/e2e/test_nats_cluster.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ha_load  # noqa: E402
from _cluster import LocalCluster, load_app  # noqa: E402

#: The cluster's settings: the function writes a file of the benchmark's (no sandbox), and
#: the supervisor restarts a killed node after 1 s each time.
SETTINGS = {"BURST_SANDBOX": "off", "BURST_SUPERVISE_BACKOFF": "1",
            "BURST_SUPERVISE_BACKOFF_MAX": "1", "BURST_HEARTBEAT_INTERVAL": "0.2"}


def run_kills(home: Path, fn: Any, workdir: Path, kills: int, settle: float
              ) -> dict[str, Any]:
    """Warm ``fn`` up, run the load and kill ``kills`` nodes one at a time (the inputs
    stream's leader first, then each time another node than the last one killed)."""
    for i in range(3):
        fn.remote(str(workdir / "warm"), f"w{i}")
    load = _ha_load.Load(fn, workdir / "ran").start()
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(settle)
        last = ""
        for _ in range(kills):
            leader = _ha_load.stream_leader(home)
            target = leader if leader and leader != last else next(
                n for n in sorted(_ha_load.nodes(home)) if n != last)
            row: dict[str, Any] = {"node": target, "was_inputs_leader": target == leader}
            row.update(_ha_load.kill_node(home, target))
            time.sleep(settle)
            row["until"] = time.time()
            rows.append(row)
            last = target
    finally:
        load.stop()
    for row in rows:
        row["gap_s"] = load.gap(row.pop("killed_at"), row.pop("until"))
    return {
        "kills": rows,
        "gap_max_s": max(r["gap_s"] for r in rows) if rows else None,
        "calls_acknowledged": len(load.acked),
        "calls_not_acknowledged": len(load.unacked),
        "maps_done": load.maps_done,
        "map_size": load.map_size,
        "problems": load.check(),
        "errors": load.errors[:20],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds of load before the first kill and after each catch-up")
    ap.add_argument("--home", type=Path, default=None,
                    help="use the running cluster of this BURST_HOME instead of a new one")
    args = ap.parse_args()
    if args.kills < 1 or args.settle <= 0:
        sys.exit(f"--kills {args.kills} must be at least 1 and --settle {args.settle} above 0")
    workdir = Path(tempfile.mkdtemp(prefix="burst-ha-"))
    if args.home is not None:
        os.environ["BURST_HOME"] = str(args.home)
        mod = load_app(workdir, "ha_bench_app", _ha_load.APP)
        with mod.app.run(show_output=False):
            out = run_kills(args.home, mod.echo, workdir, args.kills, args.settle)
        print(json.dumps({"benchmark": "ha.nats_node_loss", **out}, indent=2))
        return
    with LocalCluster("burst-bench-", "--nats-cluster", "3", timeout=180,
                      BURST_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
                      **SETTINGS) as cluster:
        mod = load_app(workdir, "ha_bench_app", _ha_load.APP)
        with mod.app.run(show_output=False):
            out = run_kills(cluster.home, mod.echo, workdir, args.kills, args.settle)
    print(json.dumps({"benchmark": "ha.nats_node_loss", **out}, indent=2))


if __name__ == "__main__":
    main()
