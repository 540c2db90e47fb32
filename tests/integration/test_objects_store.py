"""burst_core.objects against a real nats-server: the Dict and Queue operations the SDK
asks for (skip_if_exists, items, delete, partitions, batches above one request)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from burst.exception import InvalidError, NotFoundError
from burst.wire import DictRequest, QueueRequest
from burst_core.objects import MAX_GET_MANY, Objects


async def test_dict_put_skip_if_exists_items_and_delete(js: Any) -> None:
    objs = Objects(js)
    put = await objs.dict_op("ws", DictRequest(name="d", op="put", key=b"k", value=b"1"))
    assert put.found
    skipped = await objs.dict_op("ws", DictRequest(name="d", op="put", key=b"k", value=b"2",
                                                   skip_if_exists=True))
    assert skipped.found is False  # the existing value stays
    got = await objs.dict_op("ws", DictRequest(name="d", op="get", key=b"k"))
    assert got.value == b"1"
    # a popped key can be created again with skip_if_exists
    await objs.dict_op("ws", DictRequest(name="d", op="pop", key=b"k"))
    again = await objs.dict_op("ws", DictRequest(name="d", op="put", key=b"k", value=b"3",
                                                 skip_if_exists=True))
    assert again.found
    await objs.dict_op("ws", DictRequest(name="d", op="put", key=b"j", value=b"4"))
    items = await objs.dict_op("ws", DictRequest(name="d", op="items"))
    assert sorted(zip(items.keys, items.values, strict=True)) == [(b"j", b"4"), (b"k", b"3")]

    await objs.dict_op("ws", DictRequest(name="d", op="delete"))
    with pytest.raises(NotFoundError):  # the dict itself is gone, not only its entries
        await objs.dict_op("ws", DictRequest(name="d", op="len", create_if_missing=False))


async def test_queue_partitions_are_independent_and_delete_empties_them(js: Any) -> None:
    objs = Objects(js)
    await objs.queue_op("ws", QueueRequest(name="q", op="put", values=[b"a", b"b"]))
    await objs.queue_op("ws", QueueRequest(name="q", op="put", values=[b"x"], partition="p1"))
    assert (await objs.queue_op("ws", QueueRequest(name="q", op="len"))).count == 2
    assert (await objs.queue_op("ws", QueueRequest(name="q", op="len",
                                                   partition="p1"))).count == 1
    assert (await objs.queue_op("ws", QueueRequest(name="q", op="len", total=True))).count == 3
    got = await objs.queue_op("ws", QueueRequest(name="q", op="get", n=10, partition="p1"))
    assert got.values == [b"x"]
    await objs.queue_op("ws", QueueRequest(name="q", op="put", values=[b"y"], partition="p2"))
    await objs.queue_op("ws", QueueRequest(name="q", op="delete"))
    for part in ("", "p2"):
        assert (await objs.queue_op("ws", QueueRequest(name="q", op="len",
                                                       partition=part))).count == 0
    with pytest.raises(InvalidError, match="partition key of 65 characters"):
        await objs.queue_op("ws", QueueRequest(name="q", op="len", partition="x" * 65))
    with pytest.raises(InvalidError, match=f"allowed 1 to {MAX_GET_MANY}"):
        await objs.queue_op("ws", QueueRequest(name="q", op="get", n=MAX_GET_MANY + 1))


async def test_dict_listing_has_every_key_while_others_write(js: Any) -> None:
    """keys/len/items list every key stored before they were asked, while other writers
    add keys to the same dict; popped keys are not listed or counted (a watcher-based
    listing could stop early and return some keys or none under concurrent writes)."""
    objs = Objects(js)
    before = [f"k{i}".encode() for i in range(300)]
    for i in range(0, len(before), 50):
        await asyncio.gather(*(objs.dict_op("ws", DictRequest(name="busy", op="put", key=k,
                                                              value=b"v"))
                               for k in before[i:i + 50]))
    for k in before[:10]:
        await objs.dict_op("ws", DictRequest(name="busy", op="pop", key=k))
    stop = asyncio.Event()

    async def writer(tag: str) -> None:
        n = 0
        while not stop.is_set():
            await objs.dict_op("ws", DictRequest(name="busy", op="put",
                                                 key=f"{tag}{n}".encode(), value=b"w"))
            n += 1

    writers = [asyncio.create_task(writer(f"w{j}-")) for j in range(4)]
    try:
        for _ in range(15):
            keys = set((await objs.dict_op("ws", DictRequest(name="busy", op="keys"))).keys)
            missing = set(before[10:]) - keys
            assert not missing, f"{len(missing)} stored keys were not listed"
            assert not keys & set(before[:10]), "a popped key was listed"
            count = (await objs.dict_op("ws", DictRequest(name="busy", op="len"))).count
            assert count >= 290
    finally:
        stop.set()
        await asyncio.gather(*writers)
    final = await objs.dict_op("ws", DictRequest(name="busy", op="items"))
    assert len(final.keys) == len(final.values) == (
        await objs.dict_op("ws", DictRequest(name="busy", op="len"))).count
    cleared = await objs.dict_op("ws", DictRequest(name="busy", op="clear"))
    assert cleared.count == len(final.keys)
    assert (await objs.dict_op("ws", DictRequest(name="busy", op="len"))).count == 0


async def test_queue_gets_in_order_and_loses_nothing_in_flight(js: Any) -> None:
    """Items come out in the order one producer put them, each once, when a get of 1,000
    takes longer than a short wait to arrive (nats-py's fetch returned at its timeout and
    left the rest of the batch in flight: skipped for AckWait, then handed out late)."""
    objs = Objects(js)
    blob = b"x" * 32_000
    n = 1500
    for i in range(0, n, 100):
        await objs.queue_op("ws", QueueRequest(
            name="big", op="put", values=[i.to_bytes(4, "big") + blob for i in range(i, i + 100)]))
    got: list[int] = []
    while True:
        resp = await objs.queue_op("ws", QueueRequest(name="big", op="get", n=1000, timeout=0))
        if not resp.values:
            break
        got += [int.from_bytes(v[:4], "big") for v in resp.values]
    assert got == list(range(n))
    assert (await objs.queue_op("ws", QueueRequest(name="big", op="len"))).count == 0
    # A blocking get waits for the first item, then takes what is there with it.
    waiter = asyncio.create_task(objs.queue_op("ws", QueueRequest(name="big", op="get", n=5,
                                                                  timeout=10)))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await objs.queue_op("ws", QueueRequest(name="big", op="put", values=[b"a", b"b"]))
    assert (await waiter).values in ([b"a"], [b"a", b"b"])


async def test_queue_get_waits_for_the_first_item_then_takes_what_is_there(js: Any) -> None:
    objs = Objects(js)
    loop = asyncio.get_running_loop()
    start = loop.time()
    empty = await objs.queue_op("ws", QueueRequest(name="w", op="get", n=5, timeout=0.3))
    assert empty.values == [] and loop.time() - start >= 0.25

    async def put_later() -> None:
        await asyncio.sleep(0.3)
        await objs.queue_op("ws", QueueRequest(name="w", op="put", values=[b"1", b"2", b"3"]))

    putter = asyncio.create_task(put_later())
    got = await objs.queue_op("ws", QueueRequest(name="w", op="get", n=5, timeout=30.0))
    await putter
    # the first item ends the wait; the others that came with it are taken too (or
    # are left for the next get, never stranded)
    rest = await objs.queue_op("ws", QueueRequest(name="w", op="get", n=5, timeout=0.0))
    assert got.values[:1] == [b"1"] and got.values + rest.values == [b"1", b"2", b"3"]
    assert loop.time() - start < 20


async def test_queue_delete_removes_every_partitions_consumer(js: Any) -> None:
    """A deleted queue leaves no consumer behind (one per partition used); a process that
    made the consumers before (a gateway, an agent) can use the name again after."""
    from burst_core import names

    gateway, agent = Objects(js), Objects(js)

    async def consumers() -> set[str]:
        infos = await js.consumers_info(names.STREAM_QUEUES)  # type: ignore[attr-defined]
        return {c.name for c in infos}

    await gateway.queue_op("ws", QueueRequest(name="other", op="ensure"))
    kept = await consumers()
    for part in ("", "p1", "p2"):
        await agent.queue_op("ws", QueueRequest(name="gone", op="put", values=[b"v"],
                                                partition=part))
        got = await agent.queue_op("ws", QueueRequest(name="gone", op="get", n=1,
                                                      timeout=5.0, partition=part))
        assert got.values == [b"v"]
    assert len(await consumers() - kept) == 3
    await gateway.queue_op("ws", QueueRequest(name="gone", op="delete"))
    assert await consumers() == kept
    # the agent still remembers the consumers it made: it makes them anew
    await gateway.queue_op("ws", QueueRequest(name="gone", op="put", values=[b"w"],
                                              partition="p1"))
    again = await agent.queue_op("ws", QueueRequest(name="gone", op="get", n=1, timeout=5.0,
                                                    partition="p1"))
    assert again.values == [b"w"]
