"""Modal-style programs using the rest of the SDK against a real cluster: ephemeral Dict
and Queue handles passed into functions, ``.aio``, big ``get_many``, ``iterate``,
partitions, ``skip_if_exists``, ``FunctionCall.gather``, ``spawn_map``, input ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_ephemeral_objects_passed_into_functions(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import asyncio, json, queue
        import burst
        from burst.exception import InvalidError

        app = burst.App("sdk-surface")

        @app.function()
        def produce(q: burst.Queue, d: burst.Dict, n: int) -> dict:
            q.put_many(list(range(n)))
            q.put("urgent", partition="hi")
            first = d.put("owner", "container", skip_if_exists=True)
            return {"local": burst.is_local(), "input": burst.current_input_id(),
                    "call": burst.current_function_call_id(), "first_put": first}

        @app.function()
        def square(x: int) -> int:
            return x * x

        @app.function()
        def record(d: burst.Dict, x: int) -> None:
            d[f"seen-{x}"] = x

        async def use_aio(d, q):
            await d.put.aio("a", 1)
            await q.put.aio("z")
            keys = sorted([k async for k in d.keys.aio()])
            return [await d.get.aio("a"), await q.get.aio(timeout=5), await d.len.aio(), keys]

        @app.local_entrypoint()
        def main():
            out = {}
            with burst.Dict.ephemeral() as d, burst.Queue.ephemeral() as q:
                info = produce.remote(q, d, 2500)
                out["info"] = info
                out["second_put"] = d.put("owner", "client", skip_if_exists=True)
                out["owner"] = d["owner"]
                got = q.get_many(2000, timeout=10)
                out["got_many"] = [len(got), got[:3], got[-1]]
                rest = list(q.iterate())
                out["rest"] = [len(rest), rest[0], rest[-1]]
                out["empty"] = q.get(block=False) is None  # Modal: None, not queue.Empty
                try:
                    q.get(timeout=0.5)
                except queue.Empty:
                    out["timed_out"] = True
                out["partition"] = q.get(partition="hi", timeout=5)
                out["aio"] = asyncio.run(use_aio(d, q))
                out["items"] = sorted(d.items())
                out["keys"] = sorted(d)
                out["values"] = sorted(map(str, d.values()))
                calls = [square.spawn(i) for i in range(4)]
                out["gather"] = burst.FunctionCall.gather(*calls)
                record.spawn_map([d] * 3, [7, 8, 9])
                for _ in range(100):
                    if all(f"seen-{x}" in d for x in (7, 8, 9)):
                        break
                    import time; time.sleep(0.3)
                out["spawn_map"] = sorted(k for k in d.keys() if k.startswith("seen-"))
            try:
                d.get("owner")
            except InvalidError as e:
                out["after"] = str(e)
            with burst.Dict.ephemeral(data={"k": 1}) as seeded:
                out["seeded"] = seeded["k"]
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=200)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["seeded"] == 1
    info = out["info"]
    assert info["local"] is False and info["first_put"] is True
    assert info["input"] and info["call"] and info["input"] != info["call"]
    assert out["second_put"] is False and out["owner"] == "container"
    assert out["got_many"] == [2000, [0, 1, 2], 1999]
    assert out["rest"] == [500, 2000, 2499]
    assert out["empty"] is True and out["timed_out"] is True
    assert out["partition"] == "urgent"
    assert out["aio"] == [1, "z", 2, ["a", "owner"]]
    assert out["items"] == [["a", 1], ["owner", "container"]]
    assert out["keys"] == ["a", "owner"]
    assert out["gather"] == [0, 1, 4, 9]
    assert out["spawn_map"] == ["seen-7", "seen-8", "seen-9"]
    assert "was ephemeral and was removed" in out["after"]


def test_class_variants_run_and_bad_gpu_is_named(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json
        import burst

        app = burst.App("sdk-cls")

        @app.cls(cpu=0.25)
        class Model:
            size: int = burst.parameter(default=1)

            @burst.concurrent(max_inputs=2)
            def scale(self, x: int) -> int:
                return x * self.size

            @burst.method()
            def together(self, x: int) -> int:
                import threading, time
                # Until this container runs 4 inputs at once (10 s at most, so that a
                # loaded machine that hands the 4th input over late still passes).
                seen, deadline = 0, time.monotonic() + 10
                while seen < 4 and time.monotonic() < deadline:
                    seen = max(seen, len({t.name for t in threading.enumerate()
                                          if t.name.startswith("burst-input")}))
                    time.sleep(0.01)
                return seen

            @burst.method()
            def batch(self, xs: list[int]) -> list[int]:
                return [len(xs)] * len(xs)

        Big = Model.with_options(memory=256, timeout=60, retries=1)
        # One container, so all 4 inputs go to it (with more, a loaded machine's scheduler
        # may start a second container for the inputs waiting on the first's start).
        Wide = Model.with_options(max_containers=1).with_concurrency(max_inputs=4)
        Batched = Model.with_batching(max_batch_size=4, wait_ms=2000)

        @app.local_entrypoint()
        def main():
            out = [Model(size=2).scale.remote(3), Big(size=5).scale.remote(3),
                   Wide().scale.remote(7)]
            out.append(max(Wide().together.map(range(4))))
            out.append(sorted(Batched().batch.map(range(4))))
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=200)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[:3] == [6, 15, 7]
    assert out[3] == 4  # the with_concurrency variant's container ran 4 inputs at once
    assert out[4] == [4, 4, 4, 4]  # the with_batching variant took them as one list

    bad = write_app(tmp_path, """
        import burst

        app = burst.App("sdk-bad")

        @app.cls()
        class Model:
            @burst.method()
            def f(self) -> int:
                return 1

        Fast = Model.with_options(gpu="H101")
    """, name="bad_gpu.py")
    proc = cluster.burst("run", str(bad), timeout=120)
    assert proc.returncode != 0
    assert "H101" in proc.stdout + proc.stderr and "H100" in proc.stdout + proc.stderr
