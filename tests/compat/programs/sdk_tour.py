"""A tour of everyday SDK calls: async generators, generator methods, `.local`, spawned
calls awaited with `.aio`, Dict and Queue idioms, and the scaling options."""

import asyncio

import modal

app = modal.App("compat-sdk-tour")


@app.function(cpu=0.25, min_containers=0, max_containers=2, buffer_containers=0,
              scaledown_window=30, timeout=60, retries=modal.Retries(max_retries=2,
                                                                    max_delay=5.0))
async def ticker(n: int):
    for i in range(n):
        await asyncio.sleep(0)
        yield i * i


@app.function(cpu=0.25, retries=2)
def double(x: int) -> int:
    return 2 * x


@app.cls(cpu=0.25)
class Tokenizer:
    @modal.method()
    def tokens(self, text: str):
        yield from text.split()

    @modal.exit()
    def close(self):
        print("tokenizer closing")


@app.local_entrypoint()
async def main():
    print("local", double.local(4))
    print("async gen", [x async for x in ticker.remote_gen.aio(4)])
    print("method gen", list(Tokenizer().tokens.remote_gen("to be or not")))
    call = await double.spawn.aio(21)
    print("spawned", await call.get.aio(timeout=60))
    calls = [double.spawn(i) for i in range(3)]
    print("gather.aio", await modal.FunctionCall.gather.aio(*calls))

    with modal.Dict.ephemeral() as d, modal.Queue.ephemeral() as q:
        d.update({"a": 1, "b": 2})
        d["c"] = 3
        print("dict", d.get("zzz", "default"), "a" in d, d.pop("a"), "a" in d, len(d))
        del d["b"]
        print("dict keys", sorted(d), d.contains("c"))
        print("put new", d.put("c", 4, skip_if_exists=True), d["c"])
        q.put(1)
        q.put_many([2, 3])
        q.put("x", partition="other")
        print("queue", len(q), q.len(partition="other"), q.get(), q.get_many(5))
        print("queue other", list(q.iterate(partition="other")))
