"""Inputs waiting in line in a container whose shim runs them in order (dispatch.py):
which run, when their timeout starts, and what becomes of them when the container dies
or their call is cancelled."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from burst import wire
from burst._shim.main import Runner, Target
from burst_agent.container import Container
from burst_agent.dispatch import InFlight
from burst_agent.runtimes.base import SIGKILL
from burst_core.schemas import FunctionSpec, Input, Output, Placement, Resources, encode


class FakeMsg:
    """An input as JetStream delivers it (first delivery), recording how it is settled."""

    def __init__(self, n: int) -> None:
        self.data = encode(Input(workspace="w", app="a", function="f", call_id=f"fc-{n}",
                                 input_id=f"in-{n}", attempt_token="t", payload=b"p",
                                 accepted_at=0.0))
        self.reply = f"$JS.ACK.INPUTS.cons.1.{n}.{n}.0.0"
        self.headers = {"Nats-Msg-Id": f"in-{n}"}  # (an untraced call's)
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")


def container(queue: int, max_inputs: int = 1) -> tuple[Container, list[bytes], list[Any]]:
    agent = SimpleNamespace(socket_dir="/tmp", agent_id="ag", cancelled=set(),
                            settings=SimpleNamespace(stop_grace=0.01))
    placement = Placement(container_id="ct-1", agent_id="ag", workspace="w", app="a",
                          deployment_id="d", bundle_hash="h",
                          function=FunctionSpec(name="f", module="m", qualname="f",
                                                max_inputs=max_inputs, timeout=60),
                          resources=Resources(), placed_at=0.0)
    c = Container(agent=agent, placement=placement)  # type: ignore[arg-type]
    writes: list[bytes] = []
    signals: list[Any] = []
    c._writer = SimpleNamespace(write=writes.append)  # type: ignore[assignment]
    c.handle = SimpleNamespace(signal=signals.append, exit_reason=lambda: "")  # type: ignore[assignment]
    c.dispatch.allow_queue(queue)
    return c, writes, signals


def completed(c: Container) -> list[Output]:
    """Outputs the container's inputs get (instead of storing them)."""
    outs: list[Output] = []

    async def complete(out: Output, inf: InFlight) -> None:
        outs.append(out)

    c.dispatch._complete = complete  # type: ignore[method-assign]
    return outs


def take(c: Container, n: int) -> list[FakeMsg]:
    msgs = [FakeMsg(i) for i in range(n)]
    for m in msgs:
        c.dispatch.take(m)  # type: ignore[arg-type]
    return msgs


async def test_the_first_runs_at_once_the_others_wait_and_follow_in_one_write() -> None:
    c, writes, _ = container(queue=2)
    take(c, 3)
    inf = list(c.in_flight.values())
    assert [i.running for i in inf] == [True, False, False]
    assert inf[0].timer is not None and inf[1].timer is None and inf[2].timer is None
    assert c.dispatch.slots == 0 and c.dispatch.running == 1
    assert len(writes) == 1  # the first input is on its way at once
    await asyncio.sleep(0)  # the end of the loop's turn
    assert len(writes) == 2  # the others in one write
    frames, data = [], b"".join(writes)
    while data:
        n = wire.frame_length(data[:4])
        frames.append(wire.to_shim_decoder.decode(data[4:4 + n]))
        data = data[4 + n:]
    assert [f.input_id for f in frames] == ["in-0", "in-1", "in-2"]


async def test_a_waiting_inputs_timeout_starts_when_the_one_before_it_is_done() -> None:
    c, _, _ = container(queue=2)
    outs = completed(c)
    take(c, 3)
    second = c.in_flight["in-1"]
    assert second.timer is None
    await c.dispatch.on_done(wire.InputDone(input_id="in-0", status="success"))
    assert [o.input_id for o in outs] == ["in-0"]
    assert second.running and second.timer is not None
    assert not c.in_flight["in-2"].running and c.dispatch.running == 1
    assert c.dispatch.slots == 1


async def test_a_dying_container_fails_the_running_input_and_hands_the_waiting_back() -> None:
    c, _, _ = container(queue=2)
    outs = completed(c)
    msgs = take(c, 3)
    await c.dispatch.finish(exit_code=1)
    assert [(o.input_id, o.status) for o in outs] == [("in-0", "failure")]
    assert [m.settled for m in msgs] == [[], ["nak"], ["nak"]]
    assert c.dispatch.slots == 3 and c.dispatch.running == 0 and not c.in_flight


async def test_cancelling_a_waiting_call_does_not_kill_the_container() -> None:
    c, _, signals = container(queue=2)
    take(c, 2)
    await c.dispatch.cancel("fc-1")  # waiting: it runs, its output is dropped
    assert signals == []
    await c.dispatch.cancel("fc-0")  # running: as before, the container is killed
    assert signals == [SIGKILL]


async def test_without_a_queue_only_max_inputs_run_and_none_waits() -> None:
    c, _, _ = container(queue=0, max_inputs=2)
    take(c, 2)
    assert [i.running for i in c.in_flight.values()] == [True, True]
    assert c.dispatch.slots == 0 and c.dispatch.capacity == 2


def plain(x: int) -> int:
    return x


async def coro(x: int) -> int:
    return x


def batched(xs: list[int]) -> list[int]:
    return xs


batched.__burst_batched__ = (8, 10)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fn", "max_inputs", "in_order"), [
    (plain, 1, True), (coro, 1, False), (batched, 1, False), (plain, 2, False),
])
def test_the_shim_says_whether_it_runs_inputs_in_order(fn: Any, max_inputs: int,
                                                       in_order: bool) -> None:
    runner = Runner(Target(fn), None, None, max_inputs)  # type: ignore[arg-type]
    assert runner.in_order() is in_order


async def test_a_container_dying_with_inputs_running_stops_the_queueing() -> None:
    c, _, _ = container(queue=2)
    completed(c)
    crashes: list[bool] = []
    c._pulled = SimpleNamespace(crashed=lambda: crashes.append(True))  # type: ignore[assignment]
    await c.dispatch.finish(exit_code=0)  # nothing running: a plain stop
    assert crashes == []
    take(c, 2)
    await c.dispatch.finish(exit_code=1)
    assert crashes == [True]
