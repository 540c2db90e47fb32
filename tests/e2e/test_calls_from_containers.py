"""Calls from inside containers: every calling form works in a function as in a client,
through the agent (containers have no token and no route to the gateway), on functions of
the same app and of deployed apps; child calls are billed to their function, refused by a
hard budget, recorded under their parent (the call graph), cancelled with it, and refused
at once when they could never start (a deadlock)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

LIB = """
    import burst

    app = burst.App("calls-lib")

    @app.function()
    def double(x):
        return 2 * x

    @app.function()
    def count(n):
        for i in range(n):
            yield i

    @app.cls()
    class Scaler:
        factor: int = burst.parameter(default=1)

        @burst.method()
        def scale(self, x):
            return self.factor * x
"""


def _result(proc_stdout: str) -> dict:
    line = next(ln for ln in proc_stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_every_form_from_a_container(cluster: Cluster, tmp_path: Path) -> None:
    cluster.burst("deploy", str(write_app(tmp_path, LIB, "calls_lib.py")), check=True)
    app = write_app(tmp_path, """
        import asyncio, json, os, traceback
        import burst

        app = burst.App("calls-forms")

        @app.function()
        def add1(x):
            return x + 1

        @app.function()
        def add(x, y):
            return x + y

        @app.function()
        def gen(n):
            for i in range(n):
                yield i * 10

        @app.function(timeout=300)
        def nap():
            import time
            time.sleep(120)

        @app.function()
        def fail():
            raise ValueError("boom from the callee")

        seen = burst.Dict.from_name("calls-for-each", create_if_missing=True)

        @app.function()
        def record(x):
            seen[x] = True

        @app.function()
        def parent():
            out = {"token": os.environ.get("BURST_TOKEN", "")}
            out["remote"] = add1.remote(1)
            call = add1.spawn(2)
            out["spawn"] = call.get(timeout=60)
            out["from_id"] = burst.FunctionCall.from_id(call.object_id).get(timeout=60)
            out["map"] = list(add1.map([1, 2, 3]))
            out["map_big"] = sum(add1.map(range(300)))
            out["starmap"] = list(add.starmap([(1, 2), (3, 4)]))
            add1.for_each([5])
            record.for_each(["a", "b"])
            out["for_each"] = sorted(k for k in seen.keys())
            out["remote_gen"] = list(gen.remote_gen(3))
            napping = nap.spawn()
            out["cancel"] = burst.FunctionCall.from_id(napping.object_id).cancel()
            try:
                napping.get(timeout=30)
            except burst.exception.InputCancellation:
                out["cancelled_get"] = True

            async def aio():
                r = await add1.remote.aio(10)
                m = [x async for x in add1.map.aio([20, 30])]
                s = await (await add1.spawn.aio(40)).get.aio(timeout=60)
                g = [x async for x in gen.remote_gen.aio(2)]
                return [r, m, s, g]

            out["aio"] = asyncio.run(aio())
            out["lib_double"] = burst.Function.from_name("calls-lib", "double").remote(21)
            out["lib_count"] = list(
                burst.Function.from_name("calls-lib", "count").remote_gen(3))
            scaler = burst.Cls.from_name("calls-lib", "Scaler")
            out["lib_cls"] = scaler(factor=3).scale.remote(5)
            try:
                fail.remote()
            except ValueError as e:
                out["error"] = "".join(traceback.format_exception(e))
            try:
                burst.Function.from_name("calls-lib", "nope").remote(1)
            except burst.exception.NotFoundError as e:
                out["not_found"] = str(e)
            return out

        @app.local_entrypoint()
        def main():
            seen.clear()
            print("RESULT " + json.dumps(parent.remote()))
    """, "calls_forms.py")
    proc = cluster.burst("run", str(app), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = _result(proc.stdout)
    assert out["token"] == ""  # the container has no token: the agent made the calls
    assert out["remote"] == 2 and out["spawn"] == 3 and out["from_id"] == 3
    assert out["map"] == [2, 3, 4]
    assert out["map_big"] == sum(range(1, 301))
    assert out["starmap"] == [3, 7]
    assert out["for_each"] == ["a", "b"]
    assert out["remote_gen"] == [0, 10, 20]
    assert out["cancel"] is True and out["cancelled_get"] is True
    assert out["aio"] == [11, [21, 31], 41, [0, 10]]
    assert out["lib_double"] == 42 and out["lib_count"] == [0, 1, 2]
    assert out["lib_cls"] == 15
    # The caller sees the callee's own traceback.
    assert "boom from the callee" in out["error"]
    assert "Remote traceback" in out["error"] and 'raise ValueError("boom' in out["error"]
    assert "'nope'" in out["not_found"]
    # Child calls run in their own functions' containers, billed to those functions.
    deadline = time.time() + 60
    while True:
        rows = json.loads(cluster.burst("billing", "report", "--by", "function", "--format",
                                        "json", check=True).stdout)["rows"]
        billed = {r["function"] for r in rows if r["seconds"] > 0}
        if {"add1", "add", "gen", "double", "scaler"} <= billed:
            break
        assert time.time() < deadline, f"child calls not billed to their functions: {rows}"
        time.sleep(0.5)


def test_call_graph_and_cancelling_a_parent(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, time
        import burst
        import burst.client

        app = burst.App("calls-tree")

        @app.function()
        def quick(x):
            return x

        @app.function(timeout=300)
        def slow(x):
            time.sleep(120)
            return x

        @app.function(timeout=300)
        def root():
            quick.remote(1)
            for i in range(2):
                slow.spawn(i)
            time.sleep(120)

        def graph(call):
            [node] = call.get_call_graph()
            return node

        def summary(node):
            return {"fn": node.function_name, "status": node.status.name,
                    "children": sorted((summary(c) for c in node.children),
                                       key=lambda c: c["fn"])}

        @app.local_entrypoint()
        def main():
            call = root.spawn()
            deadline = time.time() + 90
            while True:
                node = graph(call)
                kids = node.children
                if len(kids) == 3 and all(c.status.name == "SUCCESS"
                                          for c in kids if c.function_name == "quick"):
                    break
                assert time.time() < deadline, summary(node)
                time.sleep(0.3)
            before = summary(node)
            # `burst app status` counts the children like any call: each is queued or
            # has a container.
            status = burst.client.Client.from_profile().get_json(
                f"/v1/apps/{app._deployed_name}/status")
            slow = next(f for f in status["functions"] if f["function"] == "slow")
            slow_containers = sum(slow["containers"].values()) + slow["queued"]
            # The graph is the same from any node of it: a child's graph starts at its root.
            child = next(c for c in kids if c.function_name == "slow")
            from_child = summary(graph(burst.FunctionCall.from_id(child.function_call_id)))
            cancelled = call.cancel()
            deadline = time.time() + 30
            while True:
                after = summary(graph(call))
                states = [c["status"] for c in after["children"] if c["fn"] == "slow"]
                if states == ["TERMINATED", "TERMINATED"]:
                    break
                assert time.time() < deadline, after
                time.sleep(0.3)
            try:
                burst.FunctionCall.from_id(child.function_call_id).get(timeout=10)
                child_result = "finished"
            except burst.exception.InputCancellation as e:
                child_result = "cancelled: " + str(e)
            print("RESULT " + json.dumps({"before": before, "from_child": from_child,
                                          "cancelled": cancelled, "after": after,
                                          "slow_containers": slow_containers,
                                          "child": child_result}))
    """, "calls_tree.py")
    proc = cluster.burst("run", str(app), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = _result(proc.stdout)
    before = out["before"]
    assert before["fn"] == "root" and before["status"] == "PENDING"
    assert [(c["fn"], c["status"]) for c in before["children"]] == [
        ("quick", "SUCCESS"), ("slow", "PENDING"), ("slow", "PENDING")]
    assert out["from_child"]["fn"] == "root" and len(out["from_child"]["children"]) == 3
    assert out["slow_containers"] >= 2
    # Cancelling the parent cancels its children still running; finished ones stand.
    assert out["cancelled"] is True
    assert out["after"]["status"] == "TERMINATED"
    assert [(c["fn"], c["status"]) for c in out["after"]["children"]] == [
        ("quick", "SUCCESS"), ("slow", "TERMINATED"), ("slow", "TERMINATED")]
    assert out["child"].startswith("cancelled: ")


def test_a_call_waiting_on_its_own_slot_fails_at_once(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, time
        import burst

        app = burst.App("calls-deadlock")

        @app.function(max_containers=1, timeout=600)
        def down(n):
            return 0 if n == 0 else down.remote(n - 1) + 1

        @app.function(max_containers=2)
        def down2(n):
            return 0 if n == 0 else down2.remote(n - 1) + 1

        @app.local_entrypoint()
        def main():
            out = {"two_slots": down2.remote(1)}  # the child finds the second slot
            t = time.monotonic()
            try:
                down.remote(3)
            except burst.exception.DeadlockError as e:
                out["error"] = str(e)
            out["seconds"] = time.monotonic() - t
            print("RESULT " + json.dumps(out))
    """, "calls_deadlock.py")
    proc = cluster.burst("run", str(app), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = _result(proc.stdout)
    assert out["two_slots"] == 1
    assert "max_containers=1" in out["error"] and "down" in out["error"], out
    assert out["seconds"] < 120, out  # at once (a cold start), not after the 600 s timeout


def test_a_hard_budget_refuses_a_child_call(cluster: Cluster, tmp_path: Path) -> None:
    lib = write_app(tmp_path, """
        import burst

        app = burst.App("calls-capped")

        @app.function()
        def work(x):
            return x
    """, "calls_capped.py")
    cluster.burst("deploy", str(lib), check=True)
    app = write_app(tmp_path, """
        import json
        import burst

        app = burst.App("calls-budget")

        @app.function()
        def parent():
            try:
                return {"result": burst.Function.from_name("calls-capped", "work").remote(1)}
            except burst.exception.BudgetExceededError as e:
                return {"error": str(e)}

        @app.local_entrypoint()
        def main():
            print("RESULT " + json.dumps(parent.remote()))
    """, "calls_budget.py")
    proc = cluster.burst("run", str(app), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _result(proc.stdout) == {"result": 1}
    cluster.burst("budget", "set", "calls-capped", "--limit", "0.000001", "--hard", check=True)
    try:
        deadline = time.time() + 120
        while True:  # until billing has counted the spend past the cap
            proc = cluster.burst("run", str(app), timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            out = _result(proc.stdout)
            if "error" in out:
                break
            assert time.time() < deadline, f"the child call was never refused: {out}"
            time.sleep(1)
        assert "'calls-capped'" in out["error"] and "hard cap" in out["error"], out
    finally:
        cluster.burst("budget", "clear", "calls-capped", check=True)
