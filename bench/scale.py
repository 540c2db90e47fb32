"""Benchmark: placement decisions per second over 1,000 simulated agents of 8 GPUs each.

    .venv/bin/python bench/scale.py [--agents 1000] [--gpus 8] [--placements 4000]
                                    [--concurrency 32]
                                    [--scan-placements 300]

Numbers printed as one JSON object:
- ``decision``: the scheduler's choice alone (the capacity index of its live view,
  ``ClusterState.capacity``), one placement after the other, each applied to the view so
  the cluster fills up as it would; ``decision_linear_scan``: the same with the reference
  scan over every agent (:func:`placement.choose_first`), for comparison;
- ``with_claim``: the real :class:`Claimer` (choice + compare-and-set of the allocation on
  the agent's KV record) against a real nats-server this script starts on free ports,
  with ``--concurrency`` placements in flight (as the scheduler decides many functions
  at once); every claim is checked afterwards: no GPU given twice.

Requests are one H100 each (the hardest case for best-fit: 8,000 GPUs to choose from).
Target: >= 2,000 placements/s including the claim.

With real agents (``--live 100``, the default; 0 skips; needs root and ``ip netns``):
a real cluster (``burst up --listen`` on a bridge of this machine) goes from 0 to
``--live`` live containers of one function (``min_containers``), first on its one local
agent (``live_one_agent``), then, with the local agent drained, spread over three agents
that joined with a join bundle from network namespaces standing in for three machines
(``live_three_agents``): seconds until every container is ready, placements per second,
and how many containers each agent got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from burst_core import bus, names  # noqa: E402
from burst_core.schemas import (  # noqa: E402
    AgentHeartbeat,
    AgentRecord,
    AgentRecordDecoder,
    GpuInfo,
    Resources,
    encode,
)
from burst_scheduler import placement  # noqa: E402
from burst_scheduler.claim import Claimer  # noqa: E402
from burst_scheduler.state import ClusterState  # noqa: E402

REQUEST = Resources(cpu=1.0, memory_mb=1024, gpu_type="H100", gpu_count=1)


def make_state(n_agents: int, n_gpus: int) -> ClusterState:
    state = ClusterState(heartbeat_timeout=3600.0)
    now = time.time()
    for i in range(n_agents):
        aid = f"agent-{i:05d}"
        rec = AgentRecord(agent_id=aid, cpu=64.0, memory_mb=512 * 1024,
                          gpus=[GpuInfo(index=g, type="H100") for g in range(n_gpus)],
                          gpus_declared=True)
        state.apply_agent(aid, rec, 0)
        state.apply_heartbeat(aid, AgentHeartbeat(agent_id=aid, at=now))
    return state


def bench_decision(n_agents: int, n_gpus: int, placements: int,
                   scan: bool = False) -> dict[str, float]:
    """Decisions alone, each applied to the view. ``scan``: the reference linear scan
    (:func:`placement.choose_first` over every live agent) instead of the capacity index."""
    state = make_state(n_agents, n_gpus)
    start = time.perf_counter()
    for i in range(placements):
        now = time.time()
        if scan:
            choice = placement.choose_first([REQUEST], state.live_agents(now))
        else:
            choice = state.capacity.choose_first(
                [REQUEST], lambda a: state.has_fresh_heartbeat(a, now))  # noqa: B023
        assert choice is not None
        rec = state.agents[choice.agent_id]
        new = placement.with_allocation(rec, f"ct-{i}", "ws.app.f", choice.resources,
                                        choice.gpu_indices, now)
        state.apply_agent(choice.agent_id, new, 0)
    took = time.perf_counter() - start
    return {"placements": placements, "seconds": round(took, 3),
            "per_second": round(placements / took, 1)}


async def bench_claim(nats_url: str, n_agents: int, n_gpus: int, placements: int,
                      concurrency: int) -> dict[str, float]:
    nc = await bus.connect(nats_url, "bench-scale")
    js = nc.jetstream()
    await bus.ensure_topology(js)
    kv = await js.key_value(names.KV_AGENTS)
    state = make_state(n_agents, n_gpus)
    for aid, rec in list(state.agents.items()):
        rev = await kv.put(aid, encode(rec))
        state.apply_agent(aid, rec, rev)
    claimer = Claimer(kv, state, overcommit=1.0, attempts=8)
    queue = list(range(placements))
    won: list[object] = []
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while queue:
            queue.pop()
            claim = await claimer.claim("ws.app.f", [REQUEST])
            if claim is None:
                failed += 1
            else:
                won.append(claim)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - start
    # Every claim is on the records, and no GPU was given twice.
    given: set[tuple[str, int]] = set()
    for aid in state.agents:
        raw, _ = await bus.kv_get(kv, aid)
        assert raw is not None
        for alloc in AgentRecordDecoder.decode(raw).allocations.values():
            for g in alloc.gpu_indices:
                assert (aid, g) not in given, f"GPU {g} of {aid} given twice"
                given.add((aid, g))
    assert len(given) == len(won), (len(given), len(won))
    await nc.close()
    return {"placements": len(won), "failed": failed, "concurrency": concurrency,
            "seconds": round(took, 3), "per_second": round(len(won) / took, 1)}


#: CPUs each agent of the live rows declares (BURST_CPU).
LIVE_CPU = 16

LIVE_APP = """
import burst

app = burst.App("{name}")

@app.function(cpu={cpu}, memory=32, min_containers={n}, scaledown_window=600)
def idle() -> None:
    pass
"""


def _live_fill(env: dict[str, str], client: object, name: str, n: int, agents: list[str],
               tmp: Path, timeout: float) -> dict[str, object]:
    """Deploy a function with ``min_containers=n``; seconds until ``n`` are ready (idle)
    on ``agents``."""
    from tests.e2e.test_cluster_cli import burst

    app = tmp / f"{name}.py"
    # Each container asks for 1/(n+4) of all the agents' CPUs together, so that the n
    # fill them (best-fit packs one agent before the next).
    app.write_text(LIVE_APP.format(name=name, n=n, cpu=round(LIVE_CPU * len(agents) / (n + 4),
                                                             3)))
    start = time.perf_counter()
    done = burst(env, "deploy", str(app))
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + timeout
    while True:
        view = client.get_json("/v1/agents")["agents"]  # type: ignore[attr-defined]
        per = {a["agent_id"]: sum(1 for c in a["containers"]
                                  if c["function"].endswith(f".{name}.idle")
                                  and c["state"] in ("idle", "busy")) for a in view}
        ready = sum(per.get(a, 0) for a in agents)
        if ready >= n:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: {ready}/{n} containers ready after {timeout:g} s: {per}")
        time.sleep(0.1)
    took = time.perf_counter() - start
    burst(env, "app", "stop", name)
    return {"containers": n, "seconds": round(took, 2), "per_second": round(n / took, 1),
            "per_agent": {a: per.get(a, 0) for a in agents}}


def bench_live(n: int, timeout: float) -> dict[str, object]:
    """0 -> n live containers on one agent, then on three joined agents, in one cluster."""
    import signal
    import subprocess

    from burst.client import Client
    from tests.e2e.test_cluster_cli import burst, burst_command, user_env
    from tests.netns import Machines, host_addr, netns_works

    if not netns_works():
        return {"skipped": "needs root and `ip netns` (network namespaces stand in for "
                           "machines)"}
    machines = Machines(net="10.213.78")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="burst-bench-live-") as tmp_s:
        tmp = Path(tmp_s)
        env = {**user_env(tmp), "BURST_CPU": str(LIVE_CPU), "BURST_MEMORY_MB": "16384",
               "BURST_CONTAINER_NETWORK": "off", "BURST_HEARTBEAT_INTERVAL": "0.5"}
        up = burst(env, "up", "--listen", host_addr(machines.net), "--timeout", "90")
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            profile = json.loads((tmp / "burst-home" / "profile.json").read_text())
            client = Client(profile["url"], profile["token"])
            out: dict[str, object] = {}
            out["live_one_agent"] = _live_fill(env, client, "scale-one", n, ["local"], tmp,
                                               timeout)
            client.post_json("/v1/agents/local/preempt", {})
            names_ = []
            for i in range(3):
                ns = machines.add()
                bundle = tmp / f"bundle{i}.json"
                done = burst(env, "agent", "token", "-o", str(bundle))
                assert done.returncode == 0, done.stderr
                name = f"machine{i + 1}"
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, *burst_command(), "agent", "join", str(bundle),
                     "--name", name, "--home", str(tmp / name)], env=env,
                    stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
                    start_new_session=True))
                names_.append(name)
            deadline = time.monotonic() + 60
            while True:
                view = {a["agent_id"]: a for a in client.get_json("/v1/agents")["agents"]}
                if all(view.get(a, {}).get("state") == "ready" for a in names_):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"agents did not join: {sorted(view)}")
                time.sleep(0.2)
            out["live_three_agents"] = _live_fill(env, client, "scale-three", n, names_, tmp,
                                                  timeout)
            return out
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            burst(env, "down")
            machines.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--placements", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--scan-placements", type=int, default=300,
                    help="placements for the reference linear scan (0: skip it)")
    ap.add_argument("--live", type=int, default=100,
                    help="live containers on real agents (one, then three joined; 0: skip)")
    ap.add_argument("--live-timeout", type=float, default=300.0)
    args = ap.parse_args()
    from tests.servers import start_nats

    result: dict[str, object] = {
        "agents": args.agents, "gpus_per_agent": args.gpus, "request": "1×H100",
        "cpu_count": os.cpu_count(),
    }
    result["decision"] = bench_decision(args.agents, args.gpus, args.placements)
    if args.scan_placements:
        result["decision_linear_scan"] = bench_decision(
            args.agents, args.gpus, args.scan_placements, scan=True)
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as tmp:
        srv = start_nats(Path(tmp) / "nats")
        try:
            result["with_claim"] = asyncio.run(bench_claim(
                srv.url, args.agents, args.gpus, args.placements, args.concurrency))
        finally:
            srv.stop()
    result["target_with_claim_per_second"] = 2000
    if args.live:
        result["real_agents"] = bench_live(args.live, args.live_timeout)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
