"""A conditional stop (``if_idle_since``: scale-down, eviction) never takes a container
that holds an input, even one it is still reading (a redelivery, a large argument)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from burst_agent.container import Container
from burst_core.schemas import FunctionSpec, Placement, Resources


def container() -> Container:
    agent = SimpleNamespace(socket_dir="/tmp", agent_id="ag",
                            settings=SimpleNamespace(stop_grace=0.01))
    placement = Placement(container_id="ct-1", agent_id="ag", workspace="w", app="a",
                          deployment_id="d", bundle_hash="h",
                          function=FunctionSpec(name="f", module="m", qualname="f"),
                          resources=Resources(), placed_at=0.0)
    c = Container(agent=agent, placement=placement)  # type: ignore[arg-type]
    c.state, c.idle_since = "idle", 100.0
    return c


async def test_an_input_being_read_keeps_an_idle_container() -> None:
    c = container()
    c.dispatch.slots -= 1  # the pull handed it an input; _take_slow is still reading it
    assert await c.stop("evicted", if_idle_since=100.0) is False
    assert c.state == "idle" and not c._stopping.is_set()


async def test_an_idle_container_since_the_order_stops_and_a_later_idle_one_does_not() -> None:
    c = container()
    assert await c.stop("evicted", if_idle_since=99.0) is False  # idle again since then
    assert await c.stop("evicted", if_idle_since=100.0) is True
    assert c.state == "stopping" and c.stop_reason == "evicted"
    await asyncio.gather(*c._tasks, return_exceptions=True)
