"""Idle containers yield to waiting work, on a live cluster with one declared GPU.

Both functions keep idle containers for ten minutes (``scaledown_window=600``): the second
function's call is served within seconds only if the first one's idle container is
evicted. Its ``@exit`` takes a few seconds, so ``burst app status`` can be seen naming
the eviction while it happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_hello import write_app
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

APP = "evict-gpu"
SERVED_WITHIN = 30.0  # s: generous on a loaded machine, and far below the 600 s window


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A stop grace above the @exit's 3 s, so the eviction ends by @exit, not by a kill.
    yield from running_cluster(tmp_path_factory, "--gpus", "H100:1", BURST_STOP_GRACE="6")


def app_status(cluster: Cluster) -> dict[str, dict[str, Any]]:
    req = urllib.request.Request(f"{cluster.profile['url']}/v1/apps/{APP}/status",
                                 headers={"Authorization": f"Bearer {cluster.profile['token']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    return {f["function"]: f for f in body["functions"]}


def test_an_idle_gpu_container_yields_to_another_functions_call(
    cluster: Cluster, tmp_path: Path
) -> None:
    app = write_app(tmp_path, f"""
        import os, time
        import burst

        app = burst.App("{APP}")

        @app.cls(gpu="H100", scaledown_window=600)
        class Holder:
            @burst.method()
            def run(self):
                return os.environ["BURST_CONTAINER_ID"]

            @burst.exit()
            def close(self):
                time.sleep(3)

        @app.function(gpu="H100", scaledown_window=600)
        def second():
            return os.environ["BURST_CONTAINER_ID"]
    """, "evict_gpu_app.py")
    cluster.burst("deploy", str(app), check=True)
    # A deployed class's method, called by name (Holder().run.remote()).
    first = subprocess.run(
        [sys.executable, "-c", f"import burst\n"
         f"holder = burst.Function.from_name('{APP}', 'holder')\n"
         "print(holder.bind_method('run', {}, None).remote())"],
        env=cluster.env, text=True, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    eventually(lambda: app_status(cluster)["holder"]["containers"] == {"idle": 1}, 20,
               "the first function's container idle (warm, holding the only GPU)")
    assert app_status(cluster)["holder"]["waiting"] is None  # only warm: not waiting

    started = time.monotonic()
    call = subprocess.Popen(
        [sys.executable, "-c", f"import burst\n"
         f"print(burst.Function.from_name('{APP}', 'second').remote())"],
        env=cluster.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reasons: list[str] = []
    while call.poll() is None and time.monotonic() - started < SERVED_WITHIN:
        waiting = app_status(cluster)["second"]["waiting"]
        if waiting and waiting["reason"] not in reasons:
            reasons.append(waiting["reason"])
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    if call.poll() is None:
        call.kill()
    out, err = call.communicate(timeout=30)
    assert elapsed < SERVED_WITHIN, f"not served within {elapsed:.1f} s; waiting: {reasons}"
    assert call.returncode == 0, err
    assert out.strip().startswith("ct-") and out.strip() != first.stdout.strip()
    assert f"evicting 1 idle container of {APP}/holder to make room" in reasons, reasons

    def second_listed() -> dict[str, dict[str, Any]] | None:
        st = app_status(cluster)
        return st if sum(st["second"]["containers"].values()) == 1 else None

    # The new container shows in the agent's next heartbeat.
    eventually(second_listed, 10, "the second function's container in app status")

    def settled() -> dict[str, dict[str, Any]] | None:
        # A reconcile pass that read the backlog before the call's ack landed says
        # "waiting" once more; the next pass (BURST_RECONCILE_INTERVAL, 0.5 s) clears it.
        st = second_listed()
        return st if st is not None and st["second"]["waiting"] is None else None

    status = eventually(settled, 10, "the second function no longer waiting")
    assert status["holder"]["containers"] == {} and status["holder"]["waiting"] is None
    table = cluster.burst("app", "status", APP, check=True).stdout
    assert "evicting" not in table and "none free" not in table
