"""The agent's continuous pull of a function's inputs (inputs.py) on a real nats-server.

Containers are stand-ins that take the inputs the pull hands them and answer when the
test says so; the consumer, the pull requests and the redeliveries are JetStream's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from burst_agent.inputs import InputPuller
from burst_agent.settings import AgentSettings
from burst_core import bus, names
from tests.servers import Server
from tests.waiting import eventually_async

pytestmark = pytest.mark.integration

FN = "ws.app.fn"
CONSUMER = names.function_consumer(FN)
SETTINGS = AgentSettings(fetch_timeout=0.5, input_hold=0.3, pull_retry=0.1)


class Box:
    """A container as the pull sees it: free slots, and inputs handed to ``_dispatch``."""

    def __init__(self, name: str, slots: int = 1) -> None:
        self.id = name
        self._slots = slots
        self.puller: InputPuller | None = None
        self.running: list[Msg] = []
        self.ran: list[bytes] = []  # every input it started, redeliveries included
        self.deliveries: list[int] = []  # JetStream's delivery count of each

    def _dispatch(self, msg: Msg) -> None:
        assert self._slots > 0, f"{self.id} was handed an input without a free slot"
        self._slots -= 1
        self.running.append(msg)
        self.ran.append(msg.data)
        self.deliveries.append(msg.metadata.num_delivered)

    def join(self, puller: InputPuller) -> None:
        self.puller = puller
        puller.join(self, self._slots)  # type: ignore[arg-type]

    def leave(self) -> None:
        assert self.puller is not None
        self.puller.leave(self)  # type: ignore[arg-type]
        self.puller = None

    async def finish(self, msg: Msg | None = None) -> None:
        msg = msg or self.running[0]
        self.running.remove(msg)
        await msg.ack()
        self._slots += 1
        if self.puller is not None:
            self.puller.freed(self)  # type: ignore[arg-type]


#: Inputs move within milliseconds here: poll fast enough to see each step.
eventually = functools.partial(eventually_async, step=0.005)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    nc = await bus.connect(nats_url, "test-inputs")
    await bus.ensure_topology(nc.jetstream())
    await ensure_consumer(nc.jetstream())
    yield nc
    await nc.close()


async def ensure_consumer(js: Any) -> None:
    await bus.ensure_consumer(js, names.STREAM_INPUTS, ConsumerConfig(
        durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
        deliver_policy=DeliverPolicy.ALL, filter_subject=names.input_subject(FN),
        max_ack_pending=-1))


def make_puller(nc: Any) -> InputPuller:
    return InputPuller(nc, names.STREAM_INPUTS, CONSUMER, SETTINGS,
                       lambda: ensure_consumer(nc.jetstream()))


async def send(nc: Any, data: bytes) -> None:
    await nc.jetstream().publish(names.input_subject(FN), data)


async def count_pull_requests(nc: Any) -> list[Msg]:
    seen: list[Msg] = []

    async def cb(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{names.STREAM_INPUTS}.{CONSUMER}", cb=cb)
    await nc.flush()
    return seen


async def settled(nc: Any) -> None:
    """Every input was acked: nothing pending, nothing delivered and unanswered."""
    async def check() -> bool:
        info = await nc.jetstream().consumer_info(names.STREAM_INPUTS, CONSUMER)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    deadline = time.monotonic() + 5
    while not await check():
        assert time.monotonic() < deadline, "inputs left unacked"
        await asyncio.sleep(0.05)


async def test_sequential_inputs_go_to_the_most_recently_freed_container(nc: Any) -> None:
    puller = make_puller(nc)
    boxes = [Box(f"ct-{i}") for i in range(3)]
    for b in boxes:
        b.join(puller)
    await eventually(lambda: puller.credits == 3, what="all three slots requested")
    first = None
    for i in range(20):
        await send(nc, b"in-%d" % i)
        busy = await eventually(lambda: [b for b in boxes if b.running], what=f"input {i}")
        assert len(busy) == 1
        first = first or busy[0]
        assert busy[0] is first  # the one that ran the previous input, every time
        await busy[0].finish()
    assert first is boxes[-1]  # at first: the one that joined last
    # Two at once: the second goes to the next most recently freed slot.
    await send(nc, b"a")
    await send(nc, b"b")
    await eventually(lambda: sum(len(b.running) for b in boxes) == 2)
    assert boxes[2].running and boxes[1].running and not boxes[0].running
    for b in boxes:
        while b.running:
            await b.finish()
    await settled(nc)
    for b in boxes:
        b.leave()
    await asyncio.wait_for(puller.task, 5)


async def test_top_ups_are_batched_and_credits_follow_free_slots(nc: Any) -> None:
    requests = await count_pull_requests(nc)
    puller = make_puller(nc)
    boxes = [Box(f"ct-{i}") for i in range(16)]
    for b in boxes:
        b.join(puller)
    await eventually(lambda: puller.credits == 16)
    n = 200
    for i in range(n):
        await send(nc, b"in-%d" % i)
        busy = await eventually(lambda: [b for b in boxes if b.running])
        await busy[0].finish()
    await eventually(lambda: puller.credits == puller.free_slots == 16)
    # One request per 8 inputs (half the free slots), plus the renewals as they expire.
    assert len(requests) <= n / 4, len(requests)
    # Never one input per request: every request asks for several.
    assert all(b'"batch": 1,' not in r.data for r in requests[1:]), [r.data for r in requests]
    await settled(nc)
    for b in boxes:
        b.leave()
    await asyncio.wait_for(puller.task, 5)


@pytest.mark.parametrize("answer_within_hold", [True, False])
async def test_over_delivery_loses_no_input_and_runs_none_twice(
        nc: Any, answer_within_hold: bool) -> None:
    """B stops while its slot is requested: the pull then has more credits than free
    slots, and inputs beyond A's slot come here anyway. They wait for A's slot (within
    ``input_hold``) or are handed back and come again; each runs exactly once."""
    puller = make_puller(nc)
    a, b = Box("ct-a"), Box("ct-b")
    a.join(puller)
    b.join(puller)
    await eventually(lambda: puller.credits == 2)
    b.leave()
    assert puller.credits == 2 and puller.free_slots == 1
    inputs = [b"in-%d" % i for i in range(5)]
    for data in inputs:
        await send(nc, data)
    await eventually(lambda: a.running, what="A took the first input")
    await eventually(lambda: puller._held, what="the second input, over-delivered, waits")
    if not answer_within_hold:
        await asyncio.sleep(SETTINGS.input_hold + 0.2)
        assert not puller._held  # handed back
    while len(set(a.ran)) < len(inputs):
        await eventually(lambda: a.running, timeout=10, what=f"input after {a.ran}")
        await a.finish()
    assert sorted(a.ran) == sorted(inputs)  # each ran once
    assert not b.ran
    # Held and run: delivered once; handed back: delivered again (an internal retry).
    assert sorted(a.deliveries) == ([1] * 5 if answer_within_hold else [1] * 4 + [2])
    await settled(nc)
    await eventually(lambda: puller.credits == puller.free_slots == 1)
    a.leave()
    await asyncio.wait_for(puller.task, 5)


async def test_last_container_leaving_releases_the_pull(nc: Any, nats_url: str) -> None:
    """Its pull requests die with its inbox: an input goes to another agent at once,
    delivered for the first time (not after AckWait, not handed back)."""
    here = make_puller(nc)
    a = Box("ct-a", slots=4)
    a.join(here)
    await eventually(lambda: here.credits == 4)
    other_nc = await bus.connect(nats_url, "other-agent")
    try:
        there = make_puller(other_nc)
        z = Box("ct-z")
        z.join(there)
        await eventually(lambda: there.credits == 1)
        a.leave()
        await asyncio.wait_for(here.task, 5)
        assert here.closed
        await send(nc, b"x")
        await eventually(lambda: z.running, timeout=2, what="the other agent got it")
        assert z.running[0].metadata.num_delivered == 1 and not a.ran
        await z.finish()
        await settled(nc)
        z.leave()
        await asyncio.wait_for(there.task, 5)
    finally:
        await other_nc.close()


async def test_a_deleted_consumer_is_made_again(nc: Any) -> None:
    puller = make_puller(nc)
    a = Box("ct-a")
    a.join(puller)
    await eventually(lambda: puller.credits == 1)
    await nc.jetstream().delete_consumer(names.STREAM_INPUTS, CONSUMER)
    await eventually(lambda: puller.credits == 0, what="the 409 ended the request")
    await eventually(lambda: puller.credits == 1, what="asked again, consumer made again")
    await send(nc, b"after")
    await eventually(lambda: a.running, timeout=3)
    await a.finish()
    await settled(nc)
    a.leave()
    await asyncio.wait_for(puller.task, 5)


async def test_a_reset_asks_again_and_over_credit_is_harmless(nc: Any) -> None:
    """After a reconnect the old requests may live on: inputs still run once each."""
    puller = make_puller(nc)
    a = Box("ct-a", slots=2)
    a.join(puller)
    await eventually(lambda: puller.credits == 2)
    puller.reset()
    await eventually(lambda: puller.credits == 2)
    for i in range(6):
        await send(nc, b"r-%d" % i)
    while len(a.ran) < 6:
        await eventually(lambda: a.running, timeout=5)
        await a.finish()
    while a.running:
        await a.finish()
    assert sorted(a.ran) == sorted(b"r-%d" % i for i in range(6))
    await settled(nc)
    a.leave()
    await asyncio.wait_for(puller.task, 5)


async def test_after_a_server_restart_the_pull_asks_again(nats_server: Server) -> None:
    """The restarted server knows none of the old requests, and a killed one said nothing
    of them: the reconnect (not their expiry, an hour away here) makes the pull ask again."""
    pullers: list[InputPuller] = []

    async def reconnected() -> None:
        for p in pullers:
            p.reset()

    nc = await bus.connect(nats_server.url, "test-restart", reconnected=reconnected)
    try:
        await bus.ensure_topology(nc.jetstream())
        await ensure_consumer(nc.jetstream())
        settings = AgentSettings(fetch_timeout=3600, input_hold=0.3, pull_retry=0.1)
        puller = InputPuller(nc, names.STREAM_INPUTS, CONSUMER, settings,
                             lambda: ensure_consumer(nc.jetstream()))
        pullers.append(puller)
        a = Box("ct-a")
        a.join(puller)
        await eventually(lambda: puller.credits == 1)
        await asyncio.to_thread(nats_server.restart, kill=True)
        await eventually(lambda: nc.is_connected and nc.stats["reconnects"] >= 1, timeout=15)
        await send(nc, b"after-restart")
        await eventually(lambda: a.running, timeout=5, what="the input after the restart")
        await a.finish()
        await settled(nc)
        a.leave()
        await asyncio.wait_for(puller.task, 5)
    finally:
        await nc.close()



class QBox(Box):
    """A container that runs one input and keeps up to ``queue`` more waiting in line."""

    def __init__(self, name: str, queue: int) -> None:
        super().__init__(name, slots=1)
        self.queue = queue
        self.waiting: list[Msg] = []

    def _dispatch(self, msg: Msg) -> None:
        if self.running:
            assert len(self.waiting) < self.queue, f"{self.id}: no room to wait"
            self.waiting.append(msg)
            self.ran.append(msg.data)
            return
        super()._dispatch(msg)

    def join(self, puller: InputPuller) -> None:
        self.puller = puller
        puller.join(self, 1, self.queue)  # type: ignore[arg-type]

    async def finish(self, msg: Msg | None = None) -> None:
        done = self.running.pop(0)
        await done.ack()
        if self.waiting:  # the next in line runs: a queue slot is free
            self.running.append(self.waiting.pop(0))
            assert self.puller is not None
            self.puller.freed(self, queued=True)  # type: ignore[arg-type]
        else:
            self._slots += 1
            if self.puller is not None:
                self.puller.freed(self)  # type: ignore[arg-type]


async def test_inputs_wait_in_containers_only_while_short_and_no_container_is_free(
        nc: Any) -> None:
    puller = make_puller(nc)
    boxes = [QBox(f"ct-{i}", queue=2) for i in range(3)]
    for b in boxes:
        b.join(puller)
    await eventually(lambda: puller.credits == 3, what="the run slots requested")
    assert not puller.prefetching  # how long inputs run here is not known yet
    for i in range(9):
        await send(nc, b"in-%d" % i)
    # One each: the others stay in the stream (another agent may take them).
    await eventually(lambda: all(len(b.running) == 1 for b in boxes))
    await asyncio.sleep(0.1)
    assert not any(b.waiting for b in boxes)
    info = await nc.jetstream().consumer_info(names.STREAM_INPUTS, CONSUMER)
    assert info.num_pending == 6
    puller.ran(0.001)  # short inputs: the queue slots are asked for and filled
    assert puller.prefetching
    await eventually(lambda: all(len(b.waiting) == 2 for b in boxes), what="queues full")
    while any(b.running for b in boxes):
        for b in boxes:
            if b.running:
                await b.finish()
    await settled(nc)
    assert sorted(d for b in boxes for d in b.ran) == sorted(b"in-%d" % i for i in range(9))
    # Idle again: a lone input goes to a free container, never in line behind another.
    await eventually(lambda: puller.free_slots == 3)
    await send(nc, b"a")
    await send(nc, b"b")
    await eventually(lambda: sum(len(b.running) for b in boxes) == 2)
    assert not any(b.waiting for b in boxes)
    for b in boxes:
        while b.running:
            await b.finish()
    # Long inputs: no more queue slots are asked for.
    for _ in range(30):
        puller.ran(1.0)
    assert not puller.prefetching
    await eventually(lambda: puller.credits == 3, timeout=5,
                     what="credits back to the run slots (old requests expired)")
    await settled(nc)
    for b in boxes:
        b.leave()
    await asyncio.wait_for(puller.task, 5)


async def test_a_crash_stops_the_queueing_until_inputs_are_short_for_a_while(nc: Any) -> None:
    puller = make_puller(nc)
    puller.ran(0.001)
    assert puller.prefetching
    puller.crashed()  # waiting inputs were handed back: ask for none for a while
    assert not puller.prefetching
    short = 0
    while not puller.prefetching:
        puller.ran(0.001)
        short += 1
    assert 8 <= short <= 16, short
    puller.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await puller.task
