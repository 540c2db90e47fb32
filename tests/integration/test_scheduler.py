"""The scheduler against a real nats-server and redis-server.

Agents are simulated by :class:`FakeAgent`, a harness on the real broker: it writes its
AgentRecord and heartbeats into KV as an agent does, reads its orders from BURST_CONTROL,
and (optionally) acts on them the way the agent's contract says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.js.errors
import pytest
import redis.asyncio as aioredis
from nats.js.api import AckPolicy, ConsumerConfig

from burst_core import bus, names
from burst_core.schemas import (
    AgentHeartbeat,
    AgentOrderDecoder,
    AgentRecord,
    AgentRecordDecoder,
    ContainerView,
    DeploymentRecord,
    FunctionSpec,
    GpuInfo,
    InputAccepted,
    Placement,
    Resources,
    StopContainer,
    encode,
)
from burst_scheduler import placement
from burst_scheduler.service import Scheduler
from burst_scheduler.settings import SchedulerSettings
from tests.waiting import eventually_async as eventually

pytestmark = pytest.mark.integration

WS, APP = "ws", "app"


class FakeAgent:
    """An agent's KV and order traffic, without containers.

    ``on_place`` says what the harness reports for a placed container: ``None`` (never
    listed: still being placed), ``"idle"`` or ``"busy"`` (one input in flight).
    """

    def __init__(
        self, js: Any, agent_id: str, *, cpu: float = 4.0, memory_mb: int = 8192,
        gpus: list[tuple[int, str]] | None = None, on_place: str | None = "idle",
        obey_stops: bool = True, heartbeat_interval: float = 0.1, stale: bool = False,
    ) -> None:
        self.js = js
        self.agent_id = agent_id
        self.record = AgentRecord(
            agent_id=agent_id, cpu=cpu, memory_mb=memory_mb,
            gpus=[GpuInfo(index=i, type=t) for i, t in (gpus or [])], gpus_declared=True,
        )
        self.on_place = on_place
        self.obey_stops = obey_stops
        self.heartbeat_interval = heartbeat_interval
        self.stale = stale
        self.views: dict[str, ContainerView] = {}
        self.placements: list[Placement] = []
        self.stops: list[tuple[float, StopContainer]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.sub: Any = None
        self._stopped = False

    async def start(self) -> FakeAgent:
        self.kv = await self.js.key_value(names.KV_AGENTS)
        self.hb_kv = await self.js.key_value(names.KV_HEARTBEATS)
        await self.kv.put(self.agent_id, encode(self.record))
        self.sub = await self.js.subscribe(
            names.agent_orders_subject(self.agent_id), stream=names.STREAM_CONTROL,
            cb=self._on_order,
        )
        if self.stale:  # last seen long ago: a lost machine
            await self.beat(at=time.time() - 1000)
        else:
            self._tasks.append(asyncio.create_task(self._beat_loop()))
        return self

    async def stop(self) -> None:
        """Stop heartbeating and reading orders (as a crashed agent would). Idempotent."""
        self._stopped = True  # nats-py's wait_for can swallow a cancel: the flag cannot
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.sub is not None:
            sub, self.sub = self.sub, None
            await sub.unsubscribe()

    async def beat(self, at: float | None = None) -> None:
        hb = AgentHeartbeat(agent_id=self.agent_id, at=at or time.time(),
                            containers=list(self.views.values()))
        await self.hb_kv.put(self.agent_id, encode(hb))

    async def _beat_loop(self) -> None:
        while not self._stopped:
            await self.beat()
            await asyncio.sleep(self.heartbeat_interval)

    async def _on_order(self, msg: Any) -> None:
        await msg.ack()
        order = AgentOrderDecoder.decode(msg.data)
        if isinstance(order, Placement):
            self.placements.append(order)
            fn_key = names.function_key(order.workspace, order.app, order.function.name)
            if self.on_place == "idle":
                self.set_idle(order.container_id, fn_key)
            elif self.on_place == "busy":
                self.set_busy(order.container_id, fn_key)
        else:
            self.stops.append((time.time(), order))
            view = self.views.get(order.container_id)
            if (self.obey_stops and view is not None and view.state == "idle"
                    and view.idle_since == order.if_idle_since):
                await self.remove(order.container_id)

    def set_idle(self, cid: str, fn_key: str, since: float | None = None) -> None:
        self.views[cid] = ContainerView(container_id=cid, fn_key=fn_key, state="idle",
                                        idle_since=since or time.time())

    def set_busy(self, cid: str, fn_key: str) -> None:
        self.views[cid] = ContainerView(container_id=cid, fn_key=fn_key, state="busy",
                                        in_flight=1)

    async def remove(self, cid: str) -> None:
        """The container stopped: drop it from heartbeats and its allocation (by CAS)."""
        self.views.pop(cid, None)

        def mutate(raw: bytes | None) -> bytes | None:
            rec = AgentRecordDecoder.decode(raw) if raw else None
            if rec is None or cid not in rec.allocations:
                return None
            return encode(placement.without_allocation(rec, cid))

        await bus.kv_cas(self.kv, self.agent_id, mutate)

    async def current(self) -> AgentRecord:
        raw, _ = await bus.kv_get(self.kv, self.agent_id)
        assert raw is not None
        record: AgentRecord = AgentRecordDecoder.decode(raw)
        return record


# ---- fixtures and helpers ------------------------------------------------------------
MakeAgent = Callable[..., Awaitable["FakeAgent"]]
MakeScheduler = Callable[..., Awaitable[Scheduler]]


def settings(nats_url: str, redis_url: str, **kw: Any) -> SchedulerSettings:
    base: dict[str, Any] = dict(
        nats_url=nats_url, redis_url=redis_url, heartbeat_timeout=1.0,
        reconcile_interval=0.5, scaledown_tick=0.2, signal_ack_wait=5.0, retry_delay=0.1,
    )
    base.update(kw)
    return SchedulerSettings(**base)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def agents(js: Any) -> AsyncIterator[MakeAgent]:
    started: list[FakeAgent] = []

    async def make(agent_id: str, **kw: Any) -> FakeAgent:
        a = await FakeAgent(js, agent_id, **kw).start()
        started.append(a)
        return a

    yield make
    for a in started:
        await a.stop()


@pytest.fixture
async def scheduler(js: Any, redis: Any, nats_url: str, redis_url: str
                    ) -> AsyncIterator[MakeScheduler]:
    started: list[Scheduler] = []

    async def make(**kw: Any) -> Scheduler:
        s = Scheduler(settings(nats_url, redis_url, **kw), js, redis)
        await s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        await s.stop()


async def deploy(js: Any, *functions: FunctionSpec, app: str = APP) -> DeploymentRecord:
    record = DeploymentRecord(workspace=WS, app=app, deployment_id=f"dep-{app}",
                              bundle_hash="b" * 64, functions=list(functions),
                              created_at=time.time())
    kv = await js.key_value(names.KV_DEPLOYMENTS)
    await kv.put(names.deployment_key(WS, app), encode(record))
    return record


def fn(name: str, **kw: Any) -> FunctionSpec:
    return FunctionSpec(name=name, module="mod", qualname=name, **kw)


def key(name: str, app: str = APP) -> str:
    return names.function_key(WS, app, name)


async def signal(js: Any, fn_key: str, n: int = 1) -> None:
    await asyncio.gather(*(
        bus.publish(js, names.input_accepted_subject(fn_key),
                    encode(InputAccepted(fn_key=fn_key, call_id=f"c-{i}-{time.time()}",
                                         at=time.time())))
        for i in range(n)
    ))


async def until_known(s: Scheduler, *fn_keys: str) -> None:
    await eventually(lambda: all(s.state.function(k) for k in fn_keys))


# ---- scale-up ------------------------------------------------------------------------
async def test_burst_of_signals_places_exactly_one_container(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1")
    s = await scheduler()
    spec = fn("f", resources=Resources(cpu=0.5, memory_mb=256))
    dep = await deploy(js, spec)
    await until_known(s, key("f"))

    await signal(js, key("f"), n=20)
    await eventually(lambda: agent.placements)
    await asyncio.sleep(1.0)  # room for any wrong extra placement to show up

    assert len(agent.placements) == 1
    order = agent.placements[0]
    assert order.container_id.startswith("ct-") and len(order.container_id) == 15
    assert (order.agent_id, order.workspace, order.app) == ("agent-1", WS, APP)
    assert (order.deployment_id, order.bundle_hash) == (dep.deployment_id, dep.bundle_hash)
    assert order.function.name == "f" and order.resources == spec.resources
    record = await agent.current()
    assert list(record.allocations) == [order.container_id]
    allocation = record.allocations[order.container_id]
    assert allocation.fn_key == key("f") and allocation.resources == spec.resources
    assert allocation.placed_at == order.placed_at


async def test_saturated_containers_scale_out_up_to_max_containers(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", on_place="busy")
    s = await scheduler()
    await deploy(js, fn("f", max_containers=2))
    await until_known(s, key("f"))

    for _ in range(8):  # each signal finds every container busy once heartbeats show it
        await signal(js, key("f"))
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)

    assert len(agent.placements) == 2
    assert len((await agent.current()).allocations) == 2


async def test_a_shell_session_gets_a_container_of_its_own_past_max_containers(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", cpu=2.0)
    s = await scheduler(shell_place_retry=0.2)
    await deploy(js, fn("f", max_containers=1, scaledown_window=0.5,
                        resources=Resources(cpu=1.0, memory_mb=256)))
    await until_known(s, key("f"))
    await signal(js, key("f"))
    await eventually(lambda: len(agent.placements) == 1)
    first = agent.placements[0].container_id

    async def ask(call_id: str, msg_id: str) -> None:
        await bus.publish(js, names.input_accepted_subject(key("f")), encode(InputAccepted(
            fn_key=key("f"), call_id=call_id, at=time.time(), shell=True)), msg_id=msg_id)

    # At max_containers, a session still gets a new container, claimed for it alone; the
    # same session asked again (a redelivered signal) gets no second one.
    await ask("fc-shell-1", "one")
    await ask("fc-shell-1", "again")
    await eventually(lambda: len(agent.placements) == 2)
    order = agent.placements[1]
    assert order.shell_call_id == "fc-shell-1" and order.container_id != first
    allocation = (await agent.current()).allocations[order.container_id]
    assert allocation.shell_call_id == "fc-shell-1" and allocation.fn_key == key("f")
    # Scaling does not count it (the function's work never waits for it) and never stops
    # it as idle; the function's own idle container goes after its window.
    assert [c.container_id for c in s.state.containers_of(key("f"), time.time())] == [first]
    await eventually(lambda: first not in agent.views, timeout=10)
    await asyncio.sleep(1.0)
    assert order.container_id in agent.views
    assert all(stop.container_id != order.container_id for _, stop in agent.stops)
    assert len(agent.placements) == 2
    # No room (2 CPUs, both claimed: the session's container and the one work placed
    # since, busy): the next session waits, and gets its container once room is made.
    agent.on_place = "busy"
    await signal(js, key("f"))
    await eventually(lambda: len(agent.placements) == 3)
    await ask("fc-shell-2", "two")
    await asyncio.sleep(1.0)
    assert len(agent.placements) == 3
    await agent.remove(order.container_id)  # the first session ended
    await eventually(lambda: len(agent.placements) == 4, timeout=10)
    assert agent.placements[3].shell_call_id == "fc-shell-2"


async def test_agents_that_do_not_fit_are_never_chosen(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    small = await agents("a-small", cpu=1.0, memory_mb=16384, gpus=[(0, "A100")])
    low_mem = await agents("b-low-mem", cpu=16.0, memory_mb=2048, gpus=[(0, "A100")])
    no_gpu = await agents("c-no-gpu", cpu=64.0, memory_mb=65536)
    wrong_gpu = await agents("d-wrong-gpu", cpu=16.0, memory_mb=16384, gpus=[(0, "T4")])
    lost = await agents("e-lost", cpu=16.0, memory_mb=16384, gpus=[(0, "A100")], stale=True)
    right = await agents("f-right", cpu=16.0, memory_mb=16384, gpus=[(0, "H100"), (1, "A100")])
    others = [small, low_mem, no_gpu, wrong_gpu, lost]
    s = await scheduler()
    request = Resources(cpu=2.0, memory_mb=4096, gpu_type="A100", gpu_count=1)
    # f keeps its container (min_containers): else g's wait would evict it once it is idle
    # (idle containers yield to waiting work) and g would rightly take its GPU.
    await deploy(js, fn("f", resources=request, min_containers=1), fn("g", resources=request))
    await until_known(s, key("f"), key("g"))

    await signal(js, key("f"))
    await eventually(lambda: right.placements)
    assert right.placements[0].gpu_indices == [1]
    assert (await right.current()).allocations[right.placements[0].container_id].gpu_indices == [1]

    # The only fitting A100 is taken now: g waits rather than going anywhere wrong.
    await signal(js, key("g"))
    await asyncio.sleep(1.5)  # several reconcile passes too
    assert len(right.placements) == 1
    for other in others:
        assert other.placements == []
        assert (await other.current()).allocations == {}


async def test_gpu_fallbacks_are_tried_in_order(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", gpus=[(0, "L4"), (1, "A10G")])
    s = await scheduler()
    await deploy(js, fn("f", resources=Resources(gpu_type="H100"),
                        gpu_fallbacks=[Resources(gpu_type="A10G"), Resources(gpu_type="L4")]))
    await until_known(s, key("f"))
    await signal(js, key("f"))
    await eventually(lambda: agent.placements)
    assert agent.placements[0].resources.gpu_type == "A10G"
    assert agent.placements[0].gpu_indices == [1]


async def test_racing_schedulers_never_give_a_gpu_twice(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("gpu-box", cpu=64.0, memory_mb=262144,
                         gpus=[(i, "H100") for i in range(8)], on_place=None)
    one, two = await scheduler(), await scheduler()
    # Twelve functions of two GPUs each against eight GPUs: at most four can win.
    specs = [fn(f"f{i}", resources=Resources(cpu=1.0, gpu_type="H100", gpu_count=2),
                max_containers=1) for i in range(12)]
    await deploy(js, *specs)
    await until_known(one, *(key(sp.name) for sp in specs))
    await until_known(two, *(key(sp.name) for sp in specs))

    results = await asyncio.gather(*(
        s.autoscaler.scale_for_work(key(sp.name), "test") for sp in specs for s in (one, two)
    ))
    assert sum(results) == 4
    await eventually(lambda: len(agent.placements) == 4)

    record = await agent.current()
    assert len(record.allocations) == 4
    indices = [i for a in record.allocations.values() for i in a.gpu_indices]
    assert sorted(indices) == list(range(8))  # every GPU given exactly once
    placed = sorted(i for p in agent.placements for i in p.gpu_indices)
    assert placed == list(range(8))
    for p in agent.placements:
        assert record.allocations[p.container_id].gpu_indices == p.gpu_indices


# ---- scale-down ----------------------------------------------------------------------
async def test_idle_container_is_stopped_after_its_window(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", on_place=None)
    s = await scheduler()
    await deploy(js, fn("f", scaledown_window=1.0))
    await until_known(s, key("f"))
    await signal(js, key("f"))
    await eventually(lambda: agent.placements)
    cid = agent.placements[0].container_id
    # The agent creates the function's input consumer when it starts the container.
    await js.add_consumer(names.STREAM_INPUTS, ConsumerConfig(
        durable_name=names.function_consumer(key("f")), ack_policy=AckPolicy.EXPLICIT,
        filter_subject=names.input_subject(key("f")),
    ))
    agent.set_busy(cid, key("f"))
    await asyncio.sleep(1.5)  # busy for longer than the window: never stopped
    assert agent.stops == []

    idle_since = time.time()
    agent.set_idle(cid, key("f"), since=idle_since)
    await eventually(lambda: agent.stops, timeout=3.0)
    at, order = agent.stops[0]
    assert order.container_id == cid and order.if_idle_since == idle_since
    assert order.reason == "scaledown"
    assert 1.0 <= at - idle_since <= 1.6

    # The agent stopped it and released the claim: the input consumer goes too.
    async def consumer_gone() -> bool:
        try:
            await js.consumer_info(names.STREAM_INPUTS, names.function_consumer(key("f")))
        except nats.js.errors.NotFoundError:
            return True
        return False

    await eventually(consumer_gone, timeout=3.0)
    assert (await agent.current()).allocations == {}
    assert len(agent.stops) == 1


async def test_min_containers_are_placed_and_kept(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", on_place="busy")
    s = await scheduler()
    await deploy(js, fn("f", min_containers=1, scaledown_window=1.0))
    # No signal: the deployment alone gets its minimum.
    await eventually(lambda: len(agent.placements) == 1, timeout=3.0)
    first = agent.placements[0].container_id
    # It is busy and more work comes: a second container, above the minimum.
    await asyncio.sleep(0.3)
    await signal(js, key("f"))
    await eventually(lambda: len(agent.placements) == 2, timeout=3.0)
    second = agent.placements[1].container_id

    now = time.time()
    agent.set_idle(first, key("f"), since=now - 0.5)  # idle longest
    agent.set_idle(second, key("f"), since=now)
    await eventually(lambda: agent.stops, timeout=3.0)
    await asyncio.sleep(2.0)  # the survivor stays idle past its window and is kept
    assert [o.container_id for _, o in agent.stops] == [first]
    assert list((await agent.current()).allocations) == [second]
    assert len(agent.placements) == 2
    assert s.state.function(key("f")) is not None


async def test_ignored_stop_is_not_repeated_while_the_container_works(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", on_place="idle", obey_stops=False)
    s = await scheduler(stop_order_retry=30.0)
    await deploy(js, fn("f", scaledown_window=0.5))
    await until_known(s, key("f"))
    await signal(js, key("f"))
    await eventually(lambda: agent.stops, timeout=3.0)
    await asyncio.sleep(1.0)
    assert len(agent.stops) == 1  # ordered once, not every tick
    # It took work (so the agent ignored the order) and went idle again: a new order.
    cid = agent.placements[0].container_id
    agent.set_busy(cid, key("f"))
    await asyncio.sleep(0.4)
    idle_again = time.time()
    agent.set_idle(cid, key("f"), since=idle_again)
    await eventually(lambda: len(agent.stops) == 2, timeout=3.0)
    assert agent.stops[1][1].if_idle_since == idle_again
    assert len(agent.placements) == 1


async def test_removed_functions_and_apps_lose_their_idle_containers(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1", on_place="idle")
    s = await scheduler()
    await deploy(js, fn("f", scaledown_window=3600.0), fn("g", scaledown_window=3600.0))
    await until_known(s, key("f"), key("g"))
    await signal(js, key("f"))
    await signal(js, key("g"))
    await eventually(lambda: len(agent.placements) == 2)
    by_fn = {p.function.name: p.container_id for p in agent.placements}

    await deploy(js, fn("g", scaledown_window=3600.0))  # a new version without f
    await eventually(lambda: agent.stops, timeout=3.0)
    assert [(o.container_id, o.reason) for _, o in agent.stops] == [
        (by_fn["f"], "function_removed")
    ]

    kv = await js.key_value(names.KV_DEPLOYMENTS)
    await kv.delete(names.deployment_key(WS, APP))
    await eventually(lambda: len(agent.stops) == 2, timeout=3.0)
    assert (agent.stops[1][1].container_id, agent.stops[1][1].reason) == (
        by_fn["g"], "app_removed"
    )
    # Work for a function that no longer exists places nothing.
    await signal(js, key("f"))
    await asyncio.sleep(0.5)
    assert len(agent.placements) == 2


# ---- reconcile and warm pools ----------------------------------------------------------
async def test_pending_inputs_without_a_signal_get_a_container(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    agent = await agents("agent-1")
    s = await scheduler()
    await deploy(js, fn("f"), fn("g"))
    await until_known(s, key("f"), key("g"))
    await bus.publish(js, names.input_subject(key("f")), b"input", msg_id="in-1")
    await eventually(lambda: agent.placements, timeout=3.0)
    await asyncio.sleep(1.0)
    assert [p.function.name for p in agent.placements] == ["f"]


async def test_pools_follow_heartbeats_and_are_rebuilt_after_a_flush(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler, redis: Any
) -> None:
    agent = await agents("agent-1", on_place=None)
    s = await scheduler()
    agent.set_idle("ct-a1", key("a"))
    agent.set_busy("ct-a2", key("a"))
    agent.set_idle("ct-b1", key("b"))

    async def pool_ids(fn_key: str) -> set[str]:
        return set(await s.pools.read(fn_key))

    async def pools_are(a: set[str], b: set[str]) -> bool:
        return await pool_ids(key("a")) == a and await pool_ids(key("b")) == b

    await eventually(lambda: pools_are({"ct-a1", "ct-a2"}, {"ct-b1"}), timeout=3.0)
    assert (await s.pools.read(key("a")))["ct-a2"].state == "busy"
    members = await redis.smembers(names.REDIS_POOLED_FUNCTIONS)
    assert {m.decode() for m in members} == {key("a"), key("b")}

    await redis.flushall()
    await eventually(lambda: pools_are({"ct-a1", "ct-a2"}, {"ct-b1"}), timeout=2.0)

    del agent.views["ct-b1"]
    await eventually(lambda: pools_are({"ct-a1", "ct-a2"}, set()), timeout=2.0)
    members = await redis.smembers(names.REDIS_POOLED_FUNCTIONS)
    assert {m.decode() for m in members} == {key("a")}

    # A lost agent's containers leave the pools once its heartbeat is stale.
    await agent.stop()
    await eventually(lambda: pools_are(set(), set()), timeout=4.0)
    assert await redis.smembers(names.REDIS_POOLED_FUNCTIONS) == set()


# ---- room for on-demand work --------------------------------------------------------
async def test_on_demand_work_preempts_preemptible_containers_to_fit(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    gpus = [(0, "H100"), (1, "H100")]
    ondemand = await agents("ondemand", gpus=gpus, on_place="busy")
    s = await scheduler()
    batch = fn("batch", resources=Resources(gpu_type="H100", gpu_count=2))
    serve = fn("serve", resources=Resources(gpu_type="H100", gpu_count=2), nonpreemptible=True)
    await deploy(js, batch, serve)
    await until_known(s, key("batch"), key("serve"))
    await signal(js, key("batch"))
    await eventually(lambda: len(ondemand.placements) == 1)
    busy_cid = ondemand.placements[0].container_id
    # Both GPUs are held by preemptible work: the on-demand function's input waits (in
    # the stream, as a real one would) and it makes room.
    await bus.publish(js, names.input_subject(key("serve")), b"input", msg_id="in-serve")
    await signal(js, key("serve"))
    await eventually(lambda: any(o.reason == "preempted" for _, o in ondemand.stops))
    stops = [o for _, o in ondemand.stops if o.reason == "preempted"]
    assert [o.container_id for o in stops] == [busy_cid]
    await ondemand.remove(busy_cid)  # the agent stops it and releases its claim
    await eventually(lambda: any(p.function.name == "serve" for p in ondemand.placements),
                     timeout=10)
    placed = next(p for p in ondemand.placements if p.function.name == "serve")
    assert sorted(placed.gpu_indices) == [0, 1]


async def test_preemptible_work_is_never_preempted_for_its_own_kind(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    ondemand = await agents("ondemand", gpus=[(0, "H100")], on_place="busy")
    s = await scheduler()
    one = fn("one", resources=Resources(gpu_type="H100", gpu_count=1))
    two = fn("two", resources=Resources(gpu_type="H100", gpu_count=1))
    await deploy(js, one, two)
    await until_known(s, key("one"), key("two"))
    await signal(js, key("one"))
    await eventually(lambda: len(ondemand.placements) == 1)
    await signal(js, key("two"))  # waits: it is preemptible itself
    await asyncio.sleep(1.5)
    assert not ondemand.stops


async def test_a_backlog_gets_its_containers_at_once(
    js: Any, agents: MakeAgent, scheduler: MakeScheduler
) -> None:
    # Containers that never report ready (still starting): the backlog sizes the scale-out.
    agent = await agents("agent-1", cpu=64, memory_mb=1 << 20, on_place=None)
    s = await scheduler(reconcile_interval=0.3)
    await deploy(js, fn("wide"), fn("capped", max_containers=4))
    await until_known(s, key("wide"), key("capped"))
    for i in range(10):
        await bus.publish(js, names.input_subject(key("wide")), b"in", msg_id=f"w-{i}")
        await bus.publish(js, names.input_subject(key("capped")), b"in", msg_id=f"c-{i}")

    def placed(name: str) -> int:
        return sum(1 for p in agent.placements if p.function.name == name)

    await eventually(lambda: placed("wide") == 10 and placed("capped") == 4, timeout=10)
    await asyncio.sleep(1.0)  # and no more than that
    assert placed("wide") == 10 and placed("capped") == 4
