"""What every reliability scenario runs: a deployed app whose function returns the call
and container that answered, and a driver that calls it (spawn, map, remote) in a
subprocess and reports every accepted call as JSON for the checker.

A scenario runs its workload twice: once without its fault, once with it, each under an
app name of its own, so the checker reads each pass apart on the module's one cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cluster
from tests.reliability.checker import Accepted, check

APP = """
import os, time
import burst

app = burst.App({name!r})

@app.function({options})
def work(x, sleep=0.0, mark="", until=""):
    from burst._shim.main import current_call

    if mark:  # a file the test owns: which container runs which call, and when
        with open(mark, "a") as f:
            f.write(f"{{x}} {{os.environ['BURST_CONTAINER_ID']}} {{time.time()}}\\n")
    # ``sleep`` seconds, or less once the file ``until`` exists (the test says when).
    end = time.time() + sleep
    while time.time() < end and not (until and os.path.exists(until)):
        time.sleep(min(0.05, max(0.0, end - time.time())))
    return [x, current_call.get(), os.environ["BURST_CONTAINER_ID"]]
"""

#: Runs in a subprocess with the cluster's environment; argv[1] is the plan as JSON.
DRIVER = r"""
import json, sys, time
import burst

plan = json.loads(sys.argv[1])
f = burst.Function.from_name(plan["app"], "work")
accepted, errors = [], []

def keep(kind, x, value):
    if not (isinstance(value, list) and len(value) == 3 and value[0] == x):
        errors.append(f"{kind} {x}: wrong value {value!r}")
    accepted.append({"call_id": value[1], "value": value, "kind": kind})

calls = []
for i in range(plan["spawn"]):
    try:
        calls.append((i, f.spawn(i, plan["sleep"], plan["mark"], plan["until"])))
    except Exception as e:
        errors.append(f"spawn {i}: {type(e).__name__}: {e}")
if plan.get("ready_file"):
    open(plan["ready_file"], "w").write("spawned\n")
for i in range(plan["map"] and 1):
    xs = list(range(1000, 1000 + plan["map"]))
    try:
        for x, value in zip(xs, f.map(xs, kwargs={"sleep": plan["map_sleep"]}), strict=True):
            keep("map", x, value)
    except Exception as e:
        errors.append(f"map: {type(e).__name__}: {e}")
for i in range(plan["remote"]):
    x = 2000 + i
    if plan["gaps"]:  # calls spaced across the scale-to-zero boundary
        time.sleep(plan["gaps"][i % len(plan["gaps"])])
    try:
        keep("remote", x, f.remote(x, plan["sleep"], plan["mark"], plan["until"]))
    except Exception as e:
        errors.append(f"remote {x}: {type(e).__name__}: {e}")
for i, call in calls:
    try:
        value = call.get(timeout=plan["get_timeout"])
        if value[1] != call.object_id:
            errors.append(f"spawn {i}: call {call.object_id} answered with {value!r}")
        keep("spawn", i, value)
    except Exception as e:
        if plan["expect_error"] and type(e).__name__ == plan["expect_error"]:
            accepted.append({"call_id": call.object_id, "kind": "spawn",
                             "value": ["error", type(e).__name__]})
            continue
        errors.append(f"spawn {i} ({call.object_id}): {type(e).__name__}: {e}")
print(json.dumps({"accepted": accepted, "errors": errors}))
"""


@dataclass
class Plan:
    """How many calls of each kind, and how long each runs (seconds)."""

    spawn: int = 4
    map: int = 8
    remote: int = 2
    sleep: float = 0.0
    map_sleep: float = 0.0
    get_timeout: float = 120.0
    ready_file: str = ""
    mark: str = ""
    #: A file whose creation ends the spawned and remote calls' ``sleep`` early: a test
    #: holds calls running until its fault has struck, however loaded the machine.
    until: str = ""
    #: The error every spawned call must end with (its class name), e.g. a timeout.
    expect_error: str = ""
    #: Seconds before each remote call, in turn (none: back to back).
    gaps: list[float] = field(default_factory=list)


@dataclass
class Result:
    accepted: list[Accepted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def deploy(c: Cluster, tmp_path: Path, name: str, options: str = "scaledown_window=2") -> None:
    """Deploy the workload app as ``name`` (``options`` go to ``@app.function``)."""
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(textwrap.dedent(APP.format(name=name, options=options)))
    c.burst("deploy", str(path), check=True, timeout=120)


def start(c: Cluster, name: str, plan: Plan) -> subprocess.Popen[str]:
    """Start the driver for app ``name``; :func:`finish` collects it."""
    args = {"app": name, **plan.__dict__}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(args)], env=c.env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the workload did not finish:\n{out}\n{err[-3000:]}") from None
    assert proc.returncode == 0, f"the workload failed:\n{out}\n{err[-3000:]}"
    body = json.loads(out.strip().splitlines()[-1])
    return Result(accepted=[Accepted(a["call_id"], a["value"], a["kind"])
                            for a in body["accepted"]], errors=body["errors"])


def run_checked(c: Cluster, name: str, plan: Plan, proc: subprocess.Popen[str] | None = None,
                timeout: float = 180, settle: float = 60) -> Result:
    """Run (or finish) the workload for ``name``, then the invariant checker.

    The caller must have got an answer for every call (no errors): a scenario's fault may
    delay calls but never fail them."""
    res = finish(proc or start(c, name, plan), timeout)
    assert not res.errors, f"calls failed under the fault: {res.errors}"
    expected = plan.spawn + plan.map + plan.remote
    assert len(res.accepted) == expected, (len(res.accepted), expected)
    res.summary = check(c.home, name, ["work"], res.accepted, timeout=settle)
    print(f"checked {name}: {res.summary}")
    return res
