"""An async local entrypoint that awaits remote calls and maps with `.map.aio`."""

import asyncio

import modal

app = modal.App("compat-async-map")


@app.function(cpu=0.25)
async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@app.function(cpu=0.25)
def add(a: int, b: int) -> int:
    return a + b


@app.local_entrypoint()
async def main():
    print("remote.aio", await double.remote.aio(21))
    print("map.aio", [y async for y in double.map.aio(range(8))])
    print("starmap.aio", [y async for y in add.starmap.aio([(1, 2), (3, 4)])])
    together = await asyncio.gather(*(double.remote.aio(i) for i in range(3)))
    print("gathered", together)
