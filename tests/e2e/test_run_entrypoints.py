"""`burst run` like `modal run`: async entrypoints, options from parameters, `::NAME`
targets, bad input, the budget display, and every line of a retried call.

The programs are written like Modal's public examples, with `import modal` aliased onto
`burst`."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

ALIAS = "import sys\nimport burst\nsys.modules['modal'] = burst\n"


def write_app(tmp_path: Path, body: str, name: str = "modal_app.py") -> Path:
    path = tmp_path / name
    path.write_text(ALIAS + textwrap.dedent(body))
    return path


def live_apps(cluster: Cluster) -> list[str]:
    data = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)
    return [a["app"] for a in data["apps"]]


def test_async_entrypoint_is_awaited(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import asyncio
        import modal

        app = modal.App("async-entry")

        @app.function()
        def square(x: int) -> int:
            return x * x

        @app.local_entrypoint()
        async def main():
            one = await square.remote.aio(7)
            many = [y async for y in square.map.aio(range(4))]
            await asyncio.sleep(0)
            print("async results", one, many)
    """)
    proc = cluster.burst("run", str(app), check=True)
    assert "async results 49 [0, 1, 4, 9]" in proc.stdout, proc.stdout + proc.stderr


TYPED = """
    from typing import Literal
    import modal

    app = modal.App("typed-entry")

    @app.function()
    def combine(a: int, b: float, mode: str) -> float:
        return a + b if mode == "add" else a * b

    @app.cls()
    class Model:
        @modal.method()
        def predict(self, x: int, scale: float = 2.0) -> float:
            return x * scale

    @app.local_entrypoint()
    def main(n: int, name: str = "world", shout: bool = False,
             mode: Literal["add", "mul"] = "add", scale: float = 1.5):
        \"\"\"Greet NAME and combine N with SCALE.\"\"\"
        greeting = f"hello {name}"
        print(greeting.upper() if shout else greeting)
        print("combined", combine.remote(n, scale, mode), type(n).__name__)

    @app.local_entrypoint()
    def other(count: int = 2):
        print("other entrypoint", count)
"""


def test_entrypoint_parameters_become_options(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, TYPED)
    proc = cluster.burst("run", f"{app}::main", "--n", "3", "--name", "x", "--shout",
                         "--mode", "mul", "--scale", "2.5", check=True)
    assert "HELLO X" in proc.stdout and "combined 7.5 int" in proc.stdout, proc.stdout
    proc = cluster.burst("run", f"{app}::main", "--n", "4", "--no-shout", check=True)
    assert "hello world" in proc.stdout and "combined 5.5 int" in proc.stdout, proc.stdout
    # ::NAME picks one of several entrypoints
    proc = cluster.burst("run", f"{app}::other", "--count", "5", check=True)
    assert "other entrypoint 5" in proc.stdout, proc.stdout

    helped = cluster.burst("run", f"{app}::main", "--help", check=True).stdout
    for text in ("--n INTEGER", "[required]", "--name TEXT", "--shout / --no-shout",
                 "[add|mul]", "--scale FLOAT", "Greet NAME"):
        assert text in helped, helped


def test_run_calls_a_function_or_method_and_prints_its_result(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    app = write_app(tmp_path, TYPED)
    proc = cluster.burst("run", f"{app}::combine", "--a", "2", "--b", "0.5", "--mode", "add",
                         check=True)
    assert proc.stdout.strip().splitlines()[-1] == "2.5", proc.stdout
    proc = cluster.burst("run", f"{app}::Model.predict", "--x", "4", check=True)
    assert proc.stdout.strip().splitlines()[-1] == "8.0", proc.stdout


def test_ambiguous_targets_are_named(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, TYPED)
    proc = cluster.burst("run", str(app))
    assert proc.returncode != 0
    assert "several local entrypoints" in proc.stderr and "main, other" in proc.stderr
    two = write_app(tmp_path, """
        import modal

        first = modal.App("first-app")
        second = modal.App("second-app")

        @first.function()
        def one() -> int:
            return 1

        @second.function()
        def two() -> int:
            return 2

        @second.local_entrypoint()
        def main():
            print("second main", two.remote())
    """, name="two_apps.py")
    proc = cluster.burst("run", str(two))
    assert proc.returncode != 0
    assert "2 apps" in proc.stderr and "first, second" in proc.stderr, proc.stderr
    proc = cluster.burst("run", f"{two}::second", check=True)
    assert "second main 2" in proc.stdout, proc.stdout
    proc = cluster.burst("run", f"{two}::one", check=True)
    assert proc.stdout.strip().splitlines()[-1] == "1", proc.stdout


def test_bad_input_is_named_and_leaves_nothing_running(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    app = write_app(tmp_path, TYPED)
    before = live_apps(cluster)
    cases = [
        (["--n", "three"], ["'three'", "--n", "integer"]),
        (["--n", "1", "--bogus", "2"], ["--bogus"]),
        (["--n", "1", "--mode", "div"], ["'div'", "add", "mul"]),
        ([], ["--n"]),
    ]
    for args, words in cases:
        proc = cluster.burst("run", f"{app}::main", *args)
        assert proc.returncode not in (0, None), (args, proc.stdout)
        for w in words:
            assert w in proc.stderr, (args, w, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
    proc = cluster.burst("run", f"{app}::nothing")
    assert proc.returncode != 0 and "'nothing'" in proc.stderr and "main" in proc.stderr
    assert live_apps(cluster) == before


def test_budget_display_small_limits_and_no_alerts(cluster: Cluster) -> None:
    out = cluster.burst("budget", "set", "tiny-app", "--limit", "0.004", check=True).stdout
    assert "$0.004 " in out and "(no alerts)" in out, out
    assert "none%" not in out and "$0.00 " not in out
    out = cluster.burst("budget", "set", "alerting", "--limit", "12", "--alert-at", "50,80",
                        check=True).stdout
    assert "$12.00" in out and "alerts at 50,80%" in out, out
    listed = cluster.burst("budget", "list", check=True).stdout
    row = next(ln for ln in listed.splitlines() if "tiny-app" in ln)
    assert "$0.004" in row and "no alerts" in row, listed
    for scope in ("tiny-app", "alerting"):
        cluster.burst("budget", "clear", scope, check=True)


def test_every_line_of_a_retried_call_reaches_burst_run(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import modal

        app = modal.App("retried-lines")
        attempts = {}

        @app.function(max_containers=1,
                      retries=modal.Retries(max_retries=1, initial_delay=0.1))
        def flaky(k: int) -> int:
            attempts[k] = attempts.get(k, 0) + 1
            for line in range(3):
                print(f"call {k} attempt {attempts[k]} line {line}", flush=True)
            if attempts[k] == 1:
                raise RuntimeError(f"attempt 1 of call {k} fails")
            return k

        @app.local_entrypoint()
        def main():
            for k in range(4):
                print(f"result {flaky.remote(k)}", flush=True)
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=180)
    lines = [re.sub(r"^\[flaky\] ", "", ln) for ln in proc.stdout.splitlines()]
    for k in range(4):
        assert f"result {k}" in lines, proc.stdout
        for line in range(3):
            text = f"call {k} attempt 2 line {line}"
            assert text in lines, (text, proc.stdout)
            # printed before the call returned, not just somewhere in the run
            assert lines.index(text) < lines.index(f"result {k}"), proc.stdout
