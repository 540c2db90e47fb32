"""Calls beyond `.remote()`: spawn, FunctionCall.get with timeouts, from_id elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_spawn_get_timeout_and_from_id_in_another_process(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, time
        import burst

        app = burst.App("spawning")

        @app.function()
        def slow(x):
            time.sleep(1.0)
            return x * 2

        @app.local_entrypoint()
        def main():
            call = slow.spawn(21)
            out = {"call_id": call.object_id}
            try:
                call.get(timeout=0.1)
            except TimeoutError:
                out["early_get"] = "TimeoutError"
            out["result"] = call.get(timeout=30)
            out["again"] = burst.FunctionCall.from_id(call.object_id).get()
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["early_get"] == "TimeoutError"
    assert out["result"] == 42 and out["again"] == 42
    assert out["call_id"].startswith("fc-")
    # Another process, after the ephemeral app is gone: the result is still there.
    code = ("import burst, sys; print(burst.FunctionCall.from_id(sys.argv[1]).get(timeout=10))")
    other = subprocess.run([sys.executable, "-c", code, out["call_id"]], env=cluster.env,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "42"


def test_unknown_call_id_is_not_found(cluster: Cluster) -> None:
    code = ("import burst\n"
            "try:\n"
            "    burst.FunctionCall.from_id('fc-' + '0' * 32).get(timeout=1)\n"
            "except burst.exception.NotFoundError as e:\n"
            "    print('not found:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True,
                          text=True, timeout=60)
    assert "not found: call 'fc-000" in proc.stdout, proc.stderr


def test_map_of_ten_thousand_returns_every_result_in_order(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json
        import burst

        app = burst.App("mapping")

        @app.function(max_containers=4)
        def sq(x):
            return x * x

        @app.function()
        def odd_fails(x):
            if x % 2:
                raise ValueError(f"odd {x}")
            return x

        @app.function()
        def add(a, b, scale=1):
            return (a + b) * scale

        @app.local_entrypoint()
        def main():
            out = list(sq.map(range(10_000)))
            mixed = list(odd_fails.map(range(6), return_exceptions=True))
            try:
                list(odd_fails.map(range(6)))
                raised = None
            except ValueError as e:
                raised = str(e)
            print(json.dumps({
                "ok": out == [x * x for x in range(10_000)], "n": len(out),
                "mixed": [repr(m) for m in mixed], "raised": raised,
                "unordered": (sorted(sq.map(range(50), order_outputs=False))
                              == [x * x for x in range(50)]),
                "starmap": list(add.starmap([(1, 2), (3, 4)], kwargs={"scale": 10})),
                "zipped": list(add.map([1, 2], [10, 20])),
            }))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["n"] == 10_000
    assert out["mixed"] == ["0", "ValueError('odd 1')", "2", "ValueError('odd 3')", "4",
                            "ValueError('odd 5')"]
    assert out["raised"] in ("odd 1", "odd 3", "odd 5")
    assert out["unordered"] is True
    assert out["starmap"] == [30, 70] and out["zipped"] == [11, 22]


def test_sequential_calls_stay_on_the_most_recently_used_container(cluster: Cluster,
                                                                    tmp_path: Path) -> None:
    """With two idle containers, one call after another runs in the container that ran
    the previous call (caches warm), not in turn in each."""
    app = write_app(tmp_path, """
        import json, os, time
        import burst

        app = burst.App("lifo")

        @app.function(max_containers=2, scaledown_window=120)
        def where(delay):
            time.sleep(delay)
            return os.environ["BURST_CONTAINER_ID"]

        @app.local_entrypoint()
        def main():
            warm = sorted(set(where.map([2.0, 2.0])))  # two containers, both idle after
            seq = [where.remote(0) for _ in range(30)]
            print(json.dumps({"warm": warm, "seq": seq}))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["warm"]) == 2, out
    assert len(set(out["seq"])) == 1 and out["seq"][0] in out["warm"], out


def test_map_over_several_containers_runs_each_input_once(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, os
        import burst

        app = burst.App("once")
        runs = 0

        @app.function(max_containers=4)
        def tagged(x):
            global runs
            runs += 1
            return [x, os.environ["BURST_CONTAINER_ID"], runs]

        @app.local_entrypoint()
        def main():
            print(json.dumps(list(tagged.map(range(2000)))))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r[0] for r in out] == list(range(2000))  # every result, once, in order
    # Each container's run counter has no gap: no input ran without its result being
    # the one returned (an input run twice leaves a gap).
    by_container: dict[str, list[int]] = {}
    for _, cid, n in out:
        by_container.setdefault(cid, []).append(n)
    for cid, ns in by_container.items():
        assert sorted(ns) == list(range(1, len(ns) + 1)), cid


def test_concurrent_inputs_share_one_container(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import asyncio, json, os, time
        import burst

        app = burst.App("concurrency")

        @app.function(max_containers=1)
        @burst.concurrent(max_inputs=8)
        def sleepy(i):
            time.sleep(1.0)
            print(f"sync input {i} done")
            return os.getpid()

        @app.function(max_containers=1)
        @burst.concurrent(max_inputs=8)
        async def async_sleepy(i):
            await asyncio.sleep(1.0)
            return os.getpid()

        @app.local_entrypoint()
        def main():
            sleepy.remote(-1)  # start the container first: measure the concurrency alone
            async_sleepy.remote(-1)
            out = {}
            for name, fn in (("sync", sleepy), ("async", async_sleepy)):
                t0 = time.time()
                pids = list(fn.map(range(8)))
                out[name] = {"seconds": time.time() - t0, "pids": sorted(set(pids))}
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("sync", "async"):
        assert len(out[name]["pids"]) == 1, out  # one container ran all eight
        assert out[name]["seconds"] < 2.0, out  # eight 1 s sleeps at once, not one by one
    # Each input's print is tagged with the function's name, one whole line each.
    assert sum("[sleepy] sync input" in ln for ln in proc.stdout.splitlines()) == 9


def test_aio_variants(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import asyncio, json
        import burst

        app = burst.App("aio")

        @app.function()
        def double(x):
            return 2 * x

        async def amain():
            out = {"remote": await double.remote.aio(21)}
            out["map"] = [r async for r in double.map.aio(range(5))]
            call = await double.spawn.aio(5)
            out["spawn_get"] = await call.get.aio(timeout=30)
            # Several calls in flight at once from one event loop.
            out["gather"] = await asyncio.gather(*(double.remote.aio(i) for i in range(4)))
            return out

        @app.local_entrypoint()
        def main():
            print(json.dumps(asyncio.run(amain())))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"remote": 42, "map": [0, 2, 4, 6, 8], "spawn_get": 10, "gather": [0, 2, 4, 6]}


def test_cls_enter_method_parameters_exit(cluster: Cluster, tmp_path: Path) -> None:
    # Which container runs which input is the scheduler's business (a map of two may
    # start a second container, a loaded machine may scale one down between calls): what
    # holds whatever the spread is that @enter runs once per instance (parameter set) in
    # each container, the instance serves every later call there, and @exit runs at stop.
    app = write_app(tmp_path, """
        import json, os, time
        import burst

        app = burst.App("classes")

        @app.cls(scaledown_window=1)
        class Model:
            factor: int = burst.parameter(default=2)

            @burst.enter()
            def load(self):
                self.loaded = getattr(self, "loaded", 0) + 1
                self.where = os.environ.get("BURST_CONTAINER_ID", "local")
                print(f"enter ran for factor {self.factor} in {self.where}")

            @burst.method()
            def mul(self, x):
                return {"value": x * self.factor, "where": self.where, "loaded": self.loaded}

            @burst.exit()
            def close(self):
                print(f"exit ran for factor {self.factor} in {self.where}")

        @app.local_entrypoint()
        def main():
            r1 = Model().mul.remote(3)
            r2 = Model().mul.remote(4)
            r3 = Model(factor=10).mul.remote(1)
            mapped = list(Model(factor=3).mul.map([1, 2]))
            local = Model().mul.local(5)["value"]
            errors = []
            for bad in (lambda: Model(size=1), lambda: Model().nope):
                try:
                    bad()
                except (burst.exception.InvalidError, AttributeError) as e:
                    errors.append(str(e))
            time.sleep(4)  # idle past the scaledown window: the container stops, @exit runs
            print(json.dumps({"r1": r1, "r2": r2, "r3": r3, "mapped": [m["value"] for m in mapped],
                              "local": local, "errors": errors}))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["r1"]["value"] == 6 and out["r2"]["value"] == 8 and out["r3"]["value"] == 10
    assert out["mapped"] == [3, 6] and out["local"] == 10
    # @enter once per instance: a call to an instance already there does not enter again.
    assert out["r1"]["loaded"] == out["r2"]["loaded"] == out["r3"]["loaded"] == 1
    assert "no parameter 'size'" in out["errors"][0] and "'nope'" in out["errors"][1]
    lines = proc.stdout.splitlines()
    entered = [ln.removeprefix("[model] enter ran for ") for ln in lines
               if ln.startswith("[model] enter ran for ")]
    exited = {ln.removeprefix("[model] exit ran for ") for ln in lines
              if ln.startswith("[model] exit ran for ")}
    # Once per parameter set and container, whichever containers the inputs went to.
    assert len(entered) == len(set(entered)), proc.stdout
    for r, factor in ((out["r1"], 2), (out["r2"], 2), (out["r3"], 10)):
        assert f"factor {factor} in {r['where']}" in entered, proc.stdout
        assert f"factor {factor} in {r['where']}" in exited, proc.stdout
    assert any(e.startswith("factor 3 in ") for e in entered), proc.stdout


def test_generators_stream_items_as_they_come(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, time
        import burst

        app = burst.App("generators")

        @app.function()
        def count(n, pause):
            for i in range(n):
                yield {"i": i, "at": time.time()}
                time.sleep(pause)

        @app.function()
        def breaks():
            yield 1
            yield 2
            raise RuntimeError("broke after two")

        @app.function()
        async def agen(n):
            for i in range(n):
                yield i * 10

        @app.local_entrypoint()
        def main():
            t0 = time.time()
            first_at = None
            got = []
            for item in count.remote_gen(4, 0.5):
                first_at = first_at or time.time() - t0
                got.append(item["i"])
            total = time.time() - t0
            partial = []
            try:
                for item in breaks.remote_gen():
                    partial.append(item)
            except RuntimeError as e:
                err = str(e)
            try:
                count.remote(1, 0)
                misuse = None
            except burst.exception.InvalidError as e:
                misuse = str(e)
            print(json.dumps({"got": got, "first_at": first_at, "total": total,
                              "partial": partial, "err": err, "misuse": misuse,
                              "agen": list(agen.remote_gen(3)),
                              "mapped": list(agen.map([1, 2]))}))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["got"] == [0, 1, 2, 3]
    # The first item arrived while the generator was still running (2 s in all).
    assert out["total"] >= 2.0 and out["first_at"] < out["total"] - 1.0, out
    assert out["partial"] == [1, 2] and out["err"] == "broke after two"
    assert "use .remote_gen()" in out["misuse"]
    assert out["agen"] == [0, 10, 20] and out["mapped"] == [[0], [0, 10]]


def test_batched_gathers_inputs_into_one_call(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json
        import burst

        app = burst.App("batching")

        @app.function(max_containers=1)
        @burst.batched(max_batch_size=8, wait_ms=300)
        def double(xs):
            return [{"value": 2 * x, "batch": len(xs)} for x in xs]

        @app.function()
        @burst.batched(max_batch_size=4, wait_ms=10)
        def wrong(xs):
            return []

        @app.local_entrypoint()
        def main():
            single = double.remote(5)
            many = list(double.map(range(20)))
            try:
                wrong.remote(1)
                err = None
            except ValueError as e:
                err = str(e)
            print(json.dumps({"single": single, "values": [m["value"] for m in many],
                              "batches": [m["batch"] for m in many], "err": err}))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["single"] == {"value": 10, "batch": 1}
    assert out["values"] == [2 * x for x in range(20)]
    assert max(out["batches"]) > 1 and max(out["batches"]) <= 8  # gathered, never above 8
    assert out["err"] == "a batched function returned 0 results for 1 inputs"


def test_large_arguments_and_results_travel_through_the_object_store(cluster: Cluster,
                                                                    tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import hashlib, json
        import burst

        app = burst.App("bigdata")

        @app.function(memory=512)
        def grow(blob, factor):
            return blob * factor

        @app.local_entrypoint()
        def main():
            blob = bytes(range(256)) * 8192  # 2 MiB argument
            out = grow.remote(blob, 3)  # 6 MiB result
            print(json.dumps({"ok": out == blob * 3, "size": len(out),
                              "sha": hashlib.sha256(out).hexdigest()[:12]}))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["size"] == 6 << 20


def test_large_json_bodies_and_the_body_limit(cluster: Cluster, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    app = write_app(tmp_path, """
        import burst

        app = burst.App("bigjson")

        @app.function(memory=256)
        def size(text):
            return {"chars": len(text), "echo": text[:5]}
    """, "bigjson_app.py")
    cluster.burst("deploy", str(app), check=True)

    def post(body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(
            cluster.profile["url"] + "/v1/apps/bigjson/functions/size/calls?wait=60",
            data=body, method="POST")
        req.add_header("Authorization", f"Bearer {cluster.profile['token']}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    text = "x" * (1 << 20)  # 1 MiB: above the 512 KiB inline limit, below the body limit
    status, body = post(json.dumps({"args": [text]}).encode())
    assert status == 200 and body["result"] == {"chars": 1 << 20, "echo": "xxxxx"}, body
    status, body = post(json.dumps({"args": ["y" * (9 << 20)]}).encode())
    assert status == 413 and body["error"]["type"] == "PayloadTooLarge"
    assert str(8 << 20) in body["error"]["message"]


def _where(cluster: Cluster, call_ids: list[str]) -> dict[str, list[str]]:
    """For each call: the stream holding its output and the bucket holding its record
    (if any), as read on the cluster's nats-server."""
    import asyncio

    import nats

    from burst_core import names
    from tests.e2e.test_hello import _nats_url

    async def read() -> dict[str, list[str]]:
        nc = await nats.connect(_nats_url(cluster))
        js = nc.jetstream()
        found: dict[str, list[str]] = {}
        try:
            for call_id in call_ids:
                found[call_id] = []
                for stream in (names.STREAM_OUTPUTS, names.STREAM_TRANSIENT_OUTPUTS):
                    for subject in (f"burst.outputs.{call_id}.1", f"burst.toutputs.{call_id}.1"):
                        try:
                            await js.get_last_msg(stream, subject)
                            found[call_id].append(stream)
                        except Exception:
                            pass
                for bucket in (names.KV_CALLS, names.KV_CALLS_TRANSIENT):
                    try:
                        await (await js.key_value(bucket)).get(call_id)
                        found[call_id].append(bucket)
                    except Exception:
                        pass
        finally:
            await nc.close()
        return found

    return asyncio.run(read())


def test_remote_and_map_results_are_transient_and_a_spawned_one_is_kept(
        cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json
        import burst

        app = burst.App("transient")

        @app.function()
        def whoami(x):
            return burst.current_function_call_id()

        @app.local_entrypoint()
        def main():
            out = {"remote": whoami.remote(0), "map": list(whoami.map([1, 2, 3]))}
            call = whoami.spawn(4)
            out["spawn"] = call.object_id
            out["spawned"] = call.get(timeout=60)
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    from burst_core import names

    transient = [out["remote"], *out["map"]]
    assert len(set(transient)) == 4 and out["spawned"] == out["spawn"]
    where = _where(cluster, [*transient, out["spawn"]])
    for call_id in transient:
        assert names.is_transient_call(call_id), call_id
        # (a .remote() answered within its wait has no record at all)
        assert names.STREAM_TRANSIENT_OUTPUTS in where[call_id], where
        assert names.STREAM_OUTPUTS not in where[call_id] and names.KV_CALLS not in where[call_id]
    for call_id in out["map"]:
        assert where[call_id] == [names.STREAM_TRANSIENT_OUTPUTS, names.KV_CALLS_TRANSIENT]
    assert not names.is_transient_call(out["spawn"])
    assert where[out["spawn"]] == [names.STREAM_OUTPUTS, names.KV_CALLS], where
    # Read back by id in another process, after the ephemeral app is gone: kept.
    code = "import burst, sys; print(burst.FunctionCall.from_id(sys.argv[1]).get(timeout=10))"
    other = subprocess.run([sys.executable, "-c", code, out["spawn"]], env=cluster.env,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == out["spawn"]


def test_a_maps_results_are_fetched_while_the_loop_over_them_is_busy(
        cluster: Cluster, tmp_path: Path) -> None:
    """A map's results are transient (kept 10 minutes by default): the SDK fetches each
    as it finishes, whatever the pace of the loop over them (before: only when the loop
    asked, so a loop slower than the retention found them gone and waited forever)."""
    app = write_app(tmp_path, """
        import json, time
        import burst
        from burst.client import Client

        app = burst.App("pumped")

        @app.function(max_containers=1)
        def staggered(i):
            time.sleep(0.2 * i)  # one container: results come one by one over 3 s
            return i

        fetched = []
        _wait_calls = Client.wait_calls

        def counting(self, refs, wait, linger=0.0):
            got = _wait_calls(self, refs, wait, linger)
            fetched.extend(time.monotonic() for _ in got)
            return got

        Client.wait_calls = counting

        @app.local_entrypoint()
        def main():
            results = staggered.map(range(6))
            first = next(results)
            time.sleep(10.0)  # the loop is busy
            woke = time.monotonic()
            before = sum(1 for t in fetched if t < woke)
            print(json.dumps({"first": first, "rest": list(results), "before": before}))
    """)
    proc = cluster.burst("run", str(app), check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == 0 and out["rest"] == [1, 2, 3, 4, 5]
    assert out["before"] == 6, out  # every result fetched while the loop slept
