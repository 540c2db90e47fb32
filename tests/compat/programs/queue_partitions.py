"""A producer/consumer over Queue partitions and a Dict, all through `.aio`."""

import asyncio
import queue

import modal

app = modal.App("compat-queue-partitions")


@app.function(cpu=0.25, timeout=120)
async def consume(q: modal.Queue, seen: modal.Dict, partition: str) -> int:
    total = 0
    async for item in q.iterate.aio(partition=partition, item_poll_timeout=1):
        total += item
        # first writer wins: one marker per partition
        await seen.put.aio(partition, item, skip_if_exists=True)
    return total


@app.local_entrypoint()
async def main():
    with modal.Queue.ephemeral() as q, modal.Dict.ephemeral() as seen:
        await q.put_many.aio(list(range(2500)), partition="bulk")
        await q.put_many.aio([1, 2, 3], partition="small")
        print("total len", await q.len.aio(total=True))
        first = await q.get_many.aio(2000, partition="bulk")
        print("got many", len(first), first[0], first[-1])
        totals = await asyncio.gather(consume.remote.aio(q, seen, "bulk"),
                                      consume.remote.aio(q, seen, "small"))
        print("totals", totals)
        print("markers", sorted([kv async for kv in seen.items.aio()]))
        try:
            q.get(timeout=0.5, partition="small")
        except queue.Empty:
            print("empty raised")
        print("non-blocking", q.get(block=False))
