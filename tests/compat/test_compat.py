"""Compatibility suite: programs written the way Modal's public examples are, run on Burst.

Every program in ``programs/`` says ``import modal``; ``programs/modal/`` is the alias a
user moving a Modal program over would add (a package that re-exports ``burst``), shipped
with each program's source so containers import it too. The programs run as users run
them (``burst run FILE [OPTIONS]``, ``python script.py`` for ``with app.run():``,
``burst deploy`` and other processes) against one cluster from ``burst up`` shared by the
module, and the tests assert what they print.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

PROGRAMS = Path(__file__).resolve().parent / "programs"

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # GPUs declared (no device needed on the process runtime) for the GPU programs
    yield from running_cluster(tmp_path_factory, "--gpus", "A100-40GB:1,A10G:1")


def burst_run(cluster: Cluster, ref: str, *args: str,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return cluster.burst("run", str(PROGRAMS / ref), *args, cwd=PROGRAMS, timeout=timeout)


def python(cluster: Cluster, script: str, *args: str,
           timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROGRAMS / script), *args], env=cluster.env,
                          cwd=PROGRAMS, text=True, capture_output=True, timeout=timeout)


def lines_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return [ln.rstrip() for ln in proc.stdout.splitlines()]


def expect(proc: subprocess.CompletedProcess[str], *wanted: str) -> None:
    """The program succeeded and printed each of ``wanted`` as a whole line."""
    lines = lines_of(proc)
    for w in wanted:
        assert w in lines, f"{w!r} not printed:\n{proc.stdout}\n{proc.stderr}"


def containers(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every container the agents report, by id."""
    agents = json.loads(cluster.burst("agent", "list", "--json", check=True).stdout)["agents"]
    return {c["container_id"]: c for agent in agents for c in agent["containers"]}


def apps_of(cluster: Cluster, app: str) -> list[str]:
    """Listed apps that are ``app``: deployed, or a run of it (an ephemeral copy)."""
    listed = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)["apps"]
    return [a["app"] for a in listed
            if app in (a["app"], a.get("name")) or a["app"].startswith(f"{app}-run-")]


def nothing_left_running(cluster: Cluster, app: str, before: set[str],
                         timeout: float = 30) -> None:
    """Eventually no app ``app`` is listed and every container started since ``before``
    (the container ids there were then) is gone. (The tests of a module run one at a
    time, so new containers are the program's.)"""
    def clear() -> bool:
        return not apps_of(cluster, app) and not set(containers(cluster)) - before

    eventually(clear, timeout, f"no app {app} listed and no container started for it left")


# Programs that `burst run` runs as they are, and lines each must print.
PROGRAMS_AND_OUTPUT = {
    "scatter_gather.py": ["handled 30", "results 30 189225", "all keys True", "queue left 0"],
    "async_map.py": ["remote.aio 42", "map.aio [0, 2, 4, 6, 8, 10, 12, 14]",
                     "starmap.aio [3, 7]", "gathered [0, 2, 4]"],
    "cls_options.py": ["default: Hello Ada", "params: Hi Bob, Hi Bob", "variant: Hey Cy",
                       "busy: ['Hello a', 'Hello b', 'Hello c']",
                       "batched variant: [10, 20, 30] 50", "base nap: slept 0.1",
                       "variant timeout: FunctionTimeoutError"],
    "starmap_for_each.py": ["starmap [8, 9, 1]", "kwargs [4, 25]", "for_each returned None",
                            "stored [('a', 'A'), ('b', 'B'), ('c', 'C')]"],
    "generators.py": ["3... 2... 1... liftoff", "items 51"],
    "retries.py": ["succeeded on attempt 3", "gave up: never works"],
    "concurrent_inputs.py": ["all met True", "containers 1"],
    "batched.py": ["lengths [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]", "largest batch <= 4 True",
                   "single (5, 1)"],
    "gather_calls.py": ["ids 5", "gathered [0, 1, 8, 27, 64]", "from_id 8"],
    "exceptions.py": ["caught InventoryError out of widgets", "remote frame shown True"],
    "large_values.py": ["blob 3145728 True", "table 200000 (199999, 'row-199999')"],
    "queue_partitions.py": ["total len 2503", "got many 2000 0 1999", "totals [1124750, 6]",
                            "markers [('bulk', 2000), ('small', 1)]", "empty raised",
                            "non-blocking None"],
    "map_options.py": ["with errors [1, 2, 'ValueError', 4, 5, 'ValueError']",
                       "unordered [1, 2, 4, 5]", "spawn_map stored [0, 10, 20, 30]",
                       "not yet", "cancelled"],
    "model_server.py": ["predict 8", "batched [1, 2, 3]"],
    "image_env.py": ["bonjour monde"],
    "sdk_tour.py": ["local 8", "async gen [0, 1, 4, 9]", "method gen ['to', 'be', 'or', 'not']",
                    "spawned 42", "gather.aio [0, 2, 4]", "dict default True 1 False 2",
                    "dict keys ['c'] True", "put new False 3", "queue 3 1 1 [2, 3]",
                    "queue other ['x']"],
    "multi_file.py": ["cleaned 'hello world'"],
    "gpu_model.py": ["embedded 5 True", "fallback ran True"],
    "input_ids.py": ["input ids distinct True", "call ids present True", "remote is_local False",
                     "client None True"],
}


@pytest.mark.parametrize("program", sorted(PROGRAMS_AND_OUTPUT))
def test_program_runs_unchanged(cluster: Cluster, program: str) -> None:
    expect(burst_run(cluster, program), *PROGRAMS_AND_OUTPUT[program])


def test_entrypoint_with_typed_arguments(cluster: Cluster) -> None:
    expect(burst_run(cluster, "typed_args.py", "--count", "3", "--ratio", "1.5", "--label",
                     "weight", "--loud", "--unit", "lb"),
           "types int float str bool", "WEIGHT: 3 X 1.5 = 4.50 LB")
    expect(burst_run(cluster, "typed_args.py", "--count", "4"),
           "total: 4 x 0.5 = 2.00 kg")


def test_uncaught_exception_fails_the_run_with_the_remote_traceback(cluster: Cluster) -> None:
    proc = burst_run(cluster, "exceptions.py", "--uncaught")
    assert proc.returncode != 0, proc.stdout
    assert "caught InventoryError out of widgets" in proc.stdout
    err = proc.stderr
    assert "InventoryError: out of gadgets" in err, err
    # the remote frames: the function and the helper it called, in the program's file
    remote = err[err.index("Remote traceback"):]
    assert "in order" in remote and "in check_stock" in remote, err


def test_script_with_app_run(cluster: Cluster) -> None:
    before = set(containers(cluster))
    expect(python(cluster, "script_run.py"), "shout HELLO!", "map ['A!', 'B!']")
    nothing_left_running(cluster, "compat-script", before)


def test_two_apps_in_one_file_picked_with_double_colon(cluster: Cluster) -> None:
    expect(burst_run(cluster, "two_apps.py::backend"), "query 8")
    expect(burst_run(cluster, "two_apps.py::frontend.render"), "page <h1>/home</h1>")


def test_spawn_then_from_id_in_another_process(cluster: Cluster) -> None:
    before = set(containers(cluster))
    cluster.burst("deploy", str(PROGRAMS / "jobs.py"), cwd=PROGRAMS, check=True)
    try:
        submitted = python(cluster, "jobs_submit.py", "19", "23")
        (call_id,) = lines_of(submitted)
        assert call_id.startswith("fc-"), call_id
        expect(python(cluster, "jobs_collect.py", call_id), "result 42")
    finally:
        cluster.burst("app", "stop", "compat-jobs", check=True)
    nothing_left_running(cluster, "compat-jobs", before)


def test_deployed_class_from_another_process(cluster: Cluster) -> None:
    before = set(containers(cluster))
    cluster.burst("deploy", str(PROGRAMS / "model_server.py"), cwd=PROGRAMS, check=True)
    try:
        expect(python(cluster, "model_client.py"), "predict 12", "batched [1, 2, 3]",
               "missing True")
    finally:
        cluster.burst("app", "stop", "compat-model-server", check=True)
    nothing_left_running(cluster, "compat-model-server", before)


def test_fan_out_from_a_container(cluster: Cluster) -> None:
    expect(burst_run(cluster, "fanout.py", "--n", "20"), "sum of squares 2470")


def test_pipeline_stages_call_each_other(cluster: Cluster) -> None:
    expect(burst_run(cluster, "pipeline.py"), "counts [2, 3, 1] [2, 3, 1]",
           "tokens ['hello', 'world']", "failure empty input")


def test_schedule_fires_during_app_run(cluster: Cluster) -> None:
    # a 1 s Period: two ticks are due within a few seconds; the script waits up to 20 s
    before = set(containers(cluster))
    expect(python(cluster, "schedule_run.py", "2", "20", timeout=60), "ticks True")
    nothing_left_running(cluster, "compat-schedule", before)


def test_enable_output_shows_remote_prints_in_a_script(cluster: Cluster) -> None:
    proc = python(cluster, "script_output.py")
    expect(proc, "result 42")
    assert "working on 41" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_app_stops_when_its_client_dies(cluster: Cluster) -> None:
    before = set(containers(cluster))
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "client_dies.py")],
                            env=cluster.env, cwd=PROGRAMS, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("spawned fc-"), line
        eventually(lambda: any(c["in_flight"] for cid, c in containers(cluster).items()
                               if cid not in before), 30,
                   "the spawned call running in a new container")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # 10 s of missed heartbeats (the default), then the app and its running input stop
    nothing_left_running(cluster, "compat-client-dies", before, timeout=30)


# Bad input: a clear error naming the problem, exit code != 0, nothing left running.
BAD_INPUT = [
    (["typed_args.py", "--count", "three"], "compat-typed-args",
     ["'three'", "--count", "integer"]),
    (["typed_args.py", "--count", "1", "--colour", "red"], "compat-typed-args",
     ["--colour"]),
    (["typed_args.py", "--count", "1", "--unit", "stone"], "compat-typed-args",
     ["'stone'", "kg", "lb"]),
    (["two_apps.py"], "compat-frontend", ["2 apps", "backend, frontend", "::"]),
    (["bad_gpu.py"], "compat-bad-gpu", ["H101", "H100"]),
    (["stale_dict.py"], "compat-stale-dict", ["ephemeral", "block"]),
]


@pytest.mark.parametrize(("args", "app", "words"), BAD_INPUT,
                         ids=["wrong-type", "unknown-option", "bad-choice", "two-apps",
                              "unknown-gpu", "dict-after-ephemeral"])
def test_bad_input_is_named_and_leaves_nothing_running(cluster: Cluster, args: list[str],
                                                       app: str, words: list[str]) -> None:
    before = set(containers(cluster))
    proc = burst_run(cluster, *args)
    assert proc.returncode not in (0, None), proc.stdout + proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    nothing_left_running(cluster, app, before)
    if app == "compat-frontend":
        nothing_left_running(cluster, "compat-backend", before)
