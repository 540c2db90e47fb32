"""Schedules on a deployed app: every tick runs once; pause stops ticks, resume restarts
them, and a backfill runs the ticks missed while paused, once each.

The scheduled function records each execution under a fresh key of a burst.Dict, so the
test counts executions, not just calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

APP = """
    import time, uuid
    import burst

    app = burst.App("{name}")
    runs = burst.Dict.from_name("{name}-runs", create_if_missing=True)

    @app.function(schedule=burst.Period(seconds=1))
    def tick():
        runs[uuid.uuid4().hex] = time.time()
"""




def executions(c: Cluster, name: str) -> int:
    code = f"import burst; print(len(burst.Dict.from_name('{name}-runs', create_if_missing=True)))"
    out = subprocess.run([sys.executable, "-c", code], env=c.env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def schedule(c: Cluster, name: str) -> dict[str, Any]:
    out = c.burst("schedule", "list", name, "--json", check=True)
    [row] = json.loads(out.stdout)["schedules"]
    return row  # type: ignore[no-any-return]


def quiesced(c: Cluster, name: str) -> tuple[int, dict[str, Any]]:
    """Once paused: every fired tick has run, exactly once. Returns (runs, schedule)."""
    def settled() -> tuple[int, dict[str, Any]] | None:
        row = schedule(c, name)
        n = executions(c, name)
        return (n, row) if n == row["fired"] else None

    n, row = eventually(settled, 60, f"{name}: every fired tick ran")
    time.sleep(2.0)  # nothing more may run while paused
    again = executions(c, name)
    assert again == n, f"{again - n} run(s) after the pause"
    assert schedule(c, name)["fired"] == row["fired"]
    return n, row


def test_ticks_run_once_pause_resume_and_backfill(cluster: Cluster, tmp_path: Path) -> None:
    name = "ticker"
    app = write_app(tmp_path, APP.format(name=name), "ticker_app.py")
    cluster.burst("deploy", str(app), check=True)
    eventually(lambda: executions(cluster, name) >= 3, 90, "three ticks ran")

    cluster.burst("schedule", "pause", name, "tick", check=True)
    runs0, row0 = quiesced(cluster, name)
    assert row0["paused"] and row0["next_tick_at"] is None
    last0 = row0["last_tick_at"]
    time.sleep(3.0)  # ~3 ticks come due while paused

    # Resume without backfill: the paused ticks are missed, not run.
    cluster.burst("schedule", "resume", name, "tick", check=True)
    eventually(lambda: schedule(cluster, name)["missed"] >= 2, 30, "paused ticks missed")
    eventually(lambda: executions(cluster, name) >= runs0 + 2, 60, "ticks after resume")
    cluster.burst("schedule", "pause", name, "tick", check=True)
    runs1, row1 = quiesced(cluster, name)
    missed = row1["missed"]
    ticks_passed = round(row1["last_tick_at"] - last0)
    assert missed >= 2
    assert runs1 - runs0 == ticks_passed - missed, (runs0, runs1, ticks_passed, missed)
    time.sleep(2.0)  # more ticks come due while paused

    # Resume with backfill: every missed tick runs, once.
    out = cluster.burst("schedule", "resume", name, "tick", "--backfill", check=True)
    assert "backfilling" in out.stdout
    eventually(lambda: schedule(cluster, name)["missed"] == 0
               and not schedule(cluster, name)["backfill_pending"], 60, "backfill done")
    eventually(lambda: executions(cluster, name) >= runs1 + missed + 2, 60, "backfilled runs")
    cluster.burst("schedule", "pause", name, "tick", check=True)
    runs2, row2 = quiesced(cluster, name)
    assert row2["missed"] == 0
    # Every tick since the first pause ran exactly once: on time, or (those missed in
    # either pause) by the backfill, which covers every missed range.
    assert runs2 - runs0 == round(row2["last_tick_at"] - last0), (runs0, runs2, row2)


def test_schedules_fire_during_an_ephemeral_run(cluster: Cluster, tmp_path: Path) -> None:
    """As `modal run`: a run's schedules fire while it runs, and stop with it."""
    app = write_app(tmp_path, APP.format(name="ephemeral-ticker") + """
    @app.local_entrypoint()
    def main():
        deadline = time.time() + 60
        while len(runs) < 2 and time.time() < deadline:
            time.sleep(0.2)
        print("ticks seen", len(runs))
""", "eph_ticker_app.py")
    proc = cluster.burst("run", str(app), check=True)
    assert "ticks seen" in proc.stdout
    fired = executions(cluster, "ephemeral-ticker")
    assert fired >= 2, proc.stdout
    # Stopped with the run: no schedule of it is left, and no tick fires after it.
    rows = json.loads(cluster.burst("schedule", "list", "--json", check=True).stdout)
    assert all(s["name"] != "ephemeral-ticker" for s in rows["schedules"]), rows
    time.sleep(2.5)
    assert executions(cluster, "ephemeral-ticker") <= fired + 1
