"""A request no agent can ever hold (``gpu="H200:2"`` on a cluster whose only agent has one
H200): ``burst deploy`` and ``burst run`` warn naming the largest agent, ``burst app
status`` says so, and its calls fail past ``BURST_UNSATISFIABLE_TIMEOUT`` with that error."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e

#: Seconds such calls wait before they fail (short here; 300 by default).
TIMEOUT = 3
WHY = ('no agent can hold gpu="H200:2", cpu=0.125, memory=128 MiB: the largest agent, '
       'local, has 1×H200, ')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, "--gpus", "H200:1",
                               BURST_UNSATISFIABLE_TIMEOUT=str(TIMEOUT))


SOURCE = """
    import burst

    app = burst.App("too-big")

    @app.function(gpu="H200:2")
    def big():
        return "never"

    @app.function(gpu=["H200:2", "H200"])  # its fallback fits: no warning
    def flexible():
        return "fallback"

    @app.local_entrypoint()
    def main():
        print(flexible.remote())
"""


def test_deploy_warns_status_says_so_and_calls_fail_after_the_timeout(
        cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, SOURCE, "too_big_app.py")
    dep = cluster.burst("deploy", str(app), check=True)
    warnings = [line for line in dep.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"Warning: function big: {WHY}"), \
        dep.stderr  # (not flexible: its fallback fits)
    started = time.monotonic()
    call = subprocess.Popen(
        [sys.executable, "-c", "import burst\n"
         "try:\n"
         "    burst.Function.from_name('too-big', 'big').remote()\n"
         "except Exception as e:\n"
         "    print(type(e).__name__, '|', e)\n"],
        env=cluster.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # While it waits, `burst app status` says why (the waiting reason, then the table).
    reason = None
    while call.poll() is None and reason is None and time.monotonic() - started < 60:
        status = json.loads(cluster.burst("app", "status", "too-big", "--json",
                                          check=True).stdout)
        waiting = {f["function"]: f for f in status["functions"]}["big"]["waiting"]
        reason = waiting["reason"] if waiting else None
    assert reason is not None and reason.startswith(WHY), reason
    out, err = call.communicate(timeout=90)
    elapsed = time.monotonic() - started
    assert call.returncode == 0, err
    kind, _, message = out.strip().partition(" | ")
    assert kind == "ResourceExhaustedError", out
    assert message.startswith(f"no container could start for {TIMEOUT} s "
                              f"(BURST_UNSATISFIABLE_TIMEOUT): {WHY}"), message
    assert elapsed >= TIMEOUT, elapsed  # it waited first
    status = json.loads(cluster.burst("app", "status", "too-big", "--json",
                                      check=True).stdout)
    assert {f["function"]: f for f in status["functions"]}["big"]["queued"] == 0  # failed


def test_run_warns_too(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, SOURCE, "too_big_run.py")
    run = cluster.burst("run", str(app), check=True)
    assert f"Warning: function big: {WHY}" in run.stderr, run.stderr
    assert "fallback" in run.stdout
