"""Scheduler replicas under faults, under the shared invariant checker: a faultless pass;
a scheduled tick across a SIGKILLed leader; two schedulers racing for the one GPU.

A tick runs exactly once across a leader change: a deployed app's ``Period(seconds=1)``
function counts its executions per tick while two scheduler replicas run (the one
`burst up` started and a second one); the leader is killed with SIGKILL, so it releases
nothing, and the other takes over when the lease runs out.

Each execution writes a fresh key ``<call id>/<random>`` into a burst.Dict; a scheduled
call's id carries its tick's time (its first 12 hex digits, in ms), so the keys say how
often each tick ran. Ticks that came due during the failover are fired late by the new
leader (within ``schedule_catchup``), so between the first and the last tick none may be
missing, and none may have run twice.

Two schedulers racing for one GPU: the leader is frozen (SIGSTOP) past its lease while
calls for the cluster's single declared GPU arrive; the other replica takes over and
places, then the frozen one is thawed with its stale view and the signals it missed.
Claims go by compare-and-set on the agent's record, so the checker must find the GPU
never held by two containers at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burst._parts import read_state
from burst_core.calls import call_created_at
from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app
from tests.reliability import workload
from tests.reliability.checker import Accepted, check
from tests.scheduler_procs import SchedulerProcs, lease_holder_at, scheduler_env
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

#: Test-sized: a SIGKILLed leader is replaced within about LEASE_TTL * 4/3.
LEASE_TTL = 2.0
SECOND = "sched-second"

APP = """
    import time, uuid
    import burst

    app = burst.App("{name}")
    runs = burst.Dict.from_name("{name}-runs", create_if_missing=True)

    @app.function(schedule=burst.Period(seconds=1), scaledown_window=2)
    def tick():
        # The call this execution works for (a scheduled call's id names its tick).
        from burst._shim.main import current_call

        runs[f"{{current_call.get()}}/{{uuid.uuid4().hex}}"] = time.time()
"""

READ_RUNS = """
import json, sys, burst
d = burst.Dict.from_name(sys.argv[1], create_if_missing=True)
print(json.dumps([str(k) for k in d.keys()]))
"""


@pytest.fixture(scope="module")
def failover_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # BURST_SUPERVISE=0: the SIGKILLed `burst up` scheduler stays down, so only the other
    # replica can take over.
    yield from running_cluster(tmp_path_factory, "--gpus", "H100:1",
                               BURST_LEASE_TTL=str(LEASE_TTL),
                               BURST_SCHEDULE_INTERVAL="0.1", BURST_SUPERVISE="0")


GPU_APP = 'gpu="H100", scaledown_window=1, timeout=120'
PLAN = dict(spawn=3, map=4, remote=1, sleep=0.3, map_sleep=0.3)


def test_faultless_pass(failover_cluster: Cluster, tmp_path: Path) -> None:
    workload.deploy(failover_cluster, tmp_path, "sched-ok", GPU_APP)
    workload.run_checked(failover_cluster, "sched-ok", workload.Plan(**PLAN))  # type: ignore[arg-type]


def run_keys(c: Cluster, name: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", READ_RUNS, f"{name}-runs"], env=c.env,
                         text=True, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def runs_per_tick(c: Cluster, name: str) -> collections.Counter[int]:
    """How many times each tick (ms) ran so far."""
    counts: collections.Counter[int] = collections.Counter()
    for k in run_keys(c, name):
        call_id = k.split("/", 1)[0]
        assert call_id.startswith("fc-"), f"an execution without its call id: {k!r}"
        counts[round(call_created_at(call_id) * 1000)] += 1
    return counts


def schedule(c: Cluster, name: str) -> dict[str, Any]:
    [row] = json.loads(c.burst("schedule", "list", name, "--json", check=True).stdout)[
        "schedules"]
    return row  # type: ignore[no-any-return]


def test_a_tick_runs_exactly_once_across_a_sigkilled_leader(
    failover_cluster: Cluster, tmp_path: Path
) -> None:
    c = failover_cluster
    name = "failover-ticker"
    state = read_state(c.home)
    assert state is not None
    parts = {p.name: p for p in state.parts}
    nats_url = f"nats://127.0.0.1:{parts['nats'].ports['client']}"
    redis_url = f"redis://127.0.0.1:{parts['redis'].ports['client']}/0"
    # The second replica gets the cluster's settings, as `burst up` gave the first.
    replicas = SchedulerProcs(scheduler_env(nats_url, redis_url, c.home, base=c.env),
                              tmp_path)

    def logs() -> str:
        return (f"--- scheduler (burst up) ---\n{c.log('scheduler')[-3000:]}\n"
                f"--- {SECOND} ---\n{replicas.log(SECOND)[-3000:]}")

    try:
        replicas.start(SECOND)
        eventually(lambda: "scheduler_started" in replicas.log(SECOND), 30,
                   f"{SECOND} follows the cluster")
        app = write_app(tmp_path, APP.format(name=name), "failover_ticker_app.py")
        c.burst("deploy", str(app), check=True)
        eventually(lambda: len(runs_per_tick(c, name)) >= 3, 60, "three ticks ran")

        # SIGKILL the lease holder, whichever replica it is: it releases nothing.
        leader = eventually(lambda: lease_holder_at(nats_url), 10, "a lease holder")
        if leader == SECOND:
            victim, follower = replicas[SECOND].pid, "the `burst up` scheduler"
        else:
            assert f'"instance": "{leader}"' in c.log("scheduler"), (leader, logs())
            victim, follower = parts["scheduler"].pid, SECOND
        os.kill(victim, signal.SIGKILL)
        killed_at, killed_mono = time.time(), time.monotonic()
        if leader == SECOND:
            replicas[SECOND].wait(10)
        successor = eventually(lambda: (h := lease_holder_at(nats_url)) != leader and h, 15,
                               f"{follower} takes the lease")
        takeover = time.monotonic() - killed_mono
        assert takeover < 5.0, f"takeover took {takeover:.2f} s"
        print(f"leader {leader} killed; {successor} took over in {takeover:.2f} s")

        # Ticks keep running through the gap (late) and after it (on time).
        eventually(lambda: max(runs_per_tick(c, name)) / 1000 > killed_at + LEASE_TTL + 2.5,
                   30, "ticks run after the takeover")
        # Stop the ticks, then wait until every tick fired has run.
        c.burst("schedule", "pause", name, "tick", check=True)

        def settled() -> tuple[collections.Counter[int], int] | None:
            last = round(schedule(c, name)["last_tick_at"] * 1000)
            runs = runs_per_tick(c, name)
            return (runs, last) if max(runs) >= last and len(runs) == (
                last - min(runs)) // 1000 + 1 else None

        try:
            runs, last = eventually(settled, 30, "every fired tick ran", step=0.5)
        except AssertionError:
            raise AssertionError(
                f"{sorted(runs_per_tick(c, name).items())}\n{logs()}") from None
        time.sleep(1.5)  # nothing more runs: no late duplicate, no tick while paused
        again = runs_per_tick(c, name)
        successor_log = replicas.log(SECOND) if successor == SECOND else c.log("scheduler")
        # Each tick's call: one result (None), and the checker's invariants once the
        # paused schedule's container scaled down (the successor scales it).
        ticks_run = sorted({k.split("/", 1)[0] for k in run_keys(c, name)})
        check(c.home, name, ["tick"], [Accepted(cid, None, "schedule") for cid in ticks_run])
    finally:
        replicas.stop_all()

    ticks = sorted(again)
    doubled = {t: n for t, n in again.items() if n != 1}
    assert not doubled, f"ticks that ran more than once: {doubled}\n{logs()}"
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert all(g == 1000 for g in gaps), f"a tick was lost: gaps {gaps}\n{logs()}"
    assert again == runs and ticks[-1] == last, (runs, again, last)
    assert "schedule_tick_fired" in successor_log, logs()  # the successor fired ticks
    # The run spans the failover: ticks before the kill, during the gap and after it.
    assert ticks[0] / 1000 < killed_at < ticks[-1] / 1000 - LEASE_TTL - 2
    print(f"{len(ticks)} ticks, each run once, "
          f"{sum(1 for t in ticks if killed_at < t / 1000 < killed_at + takeover)} of them "
          "due while no scheduler led")


def _agent_containers(c: Cluster) -> int:
    listed = json.loads(c.burst("agent", "list", "--json", check=True).stdout)
    return sum(len(a["containers"]) for a in listed["agents"])


def test_two_schedulers_racing_for_one_gpu(failover_cluster: Cluster, tmp_path: Path) -> None:
    c = failover_cluster
    state = read_state(c.home)
    assert state is not None
    parts = {p.name: p for p in state.parts}
    nats_url = f"nats://127.0.0.1:{parts['nats'].ports['client']}"
    redis_url = f"redis://127.0.0.1:{parts['redis'].ports['client']}/0"
    # Two replicas of our own race (the `burst up` one, if the tick test left it, goes:
    # BURST_SUPERVISE=0, so it stays down).
    with contextlib.suppress(ProcessLookupError):
        os.kill(parts["scheduler"].pid, signal.SIGKILL)
    replicas = SchedulerProcs(scheduler_env(nats_url, redis_url, c.home, base=c.env),
                              tmp_path)
    frozen: subprocess.Popen[bytes] | None = None
    try:
        replicas.start("race-a")
        replicas.start("race-b")
        leader = eventually(lambda: (h := lease_holder_at(nats_url)) in ("race-a", "race-b")
                            and h, 30, "a racing replica leads")
        workload.deploy(c, tmp_path, "sched-race", GPU_APP)
        # The leader places one call's container on the GPU, and scales it down: its
        # view has the function and a free GPU.
        warm = workload.finish(workload.start(c, "sched-race", workload.Plan(
            spawn=0, map=0, remote=1)))
        eventually(lambda: _agent_containers(c) == 0, 30, "the first container gone")
        frozen = replicas[leader]
        os.kill(frozen.pid, signal.SIGSTOP)  # still believes it leads; misses everything
        plan = workload.Plan(**PLAN)  # type: ignore[arg-type]
        proc = workload.start(c, "sched-race", plan)
        other = "race-b" if leader == "race-a" else "race-a"
        eventually(lambda: lease_holder_at(nats_url) == other, 15, f"{other} takes over")
        eventually(lambda: _agent_containers(c) > 0, 60, f"{other} placed a container")
        os.kill(frozen.pid, signal.SIGCONT)  # back with a stale view and stale signals
        frozen = None
        res = workload.finish(proc)
        assert not res.errors and not warm.errors, (res.errors, warm.errors)
        summary = check(c.home, "sched-race", ["work"], warm.accepted + res.accepted)
        print(f"checked sched-race: {summary}")
        for name in ("race-a", "race-b"):  # how the race went, for the record
            events = [json.loads(ln).get("event") for ln in replicas.log(name).splitlines()
                      if ln.startswith("{")]
            print(name, [e for e in events if e in ("container_placed", "no_capacity",
                                                     "leader_stepping_down")])
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
        replicas.stop_all()
