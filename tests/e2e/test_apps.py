"""`burst app list/status/stop`: what runs, what queues, and why a function waits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_app_list_status_waiting_reason_and_stop(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import burst

        app = burst.App("visible-app")

        @app.function(scaledown_window=30)
        def ok():
            return "ok"

        @app.function(gpu="H100:2")
        def needs_gpus():
            return "never placed on a GPU-less cluster"
    """, "visible_app_mod.py")
    cluster.burst("deploy", str(app), check=True)
    listing = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)
    assert any(a["app"] == "visible-app" and sorted(a["functions"]) == ["needs_gpus", "ok"]
               for a in listing["apps"])
    code = ("import burst\n"
            "print(burst.Function.from_name('visible-app', 'ok').remote())\n"
            "print(burst.Function.from_name('visible-app', 'needs_gpus').spawn().object_id)\n")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], env=cluster.env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    call_id = out.stdout.split()[1]
    deadline = time.time() + 20
    while time.time() < deadline:
        status = json.loads(cluster.burst("app", "status", "visible-app", "--json",
                                          check=True).stdout)
        fns = {f["function"]: f for f in status["functions"]}
        if fns["needs_gpus"]["waiting"] and fns["ok"]["containers"]:
            break
        time.sleep(0.5)
    # No agent of this cluster has a GPU: it says so, naming the largest agent.
    assert fns["needs_gpus"]["waiting"]["reason"].startswith(
        'no agent can hold gpu="H100:2", cpu=0.125, memory=128 MiB: the largest agent, '
        'local, has no GPU, '), fns["needs_gpus"]["waiting"]
    assert fns["needs_gpus"]["queued"] == 1  # the call waits; it is not failed
    assert sum(fns["ok"]["containers"].values()) == 1 and fns["ok"]["waiting"] is None
    table = cluster.burst("app", "status", "visible-app", check=True).stdout
    assert "no agent can hold" in table
    # The waiting call is still pending, not failed.
    pending = subprocess.run(
        [sys.executable, "-c", "import burst, sys\n"
         "try:\n    burst.FunctionCall.from_id(sys.argv[1]).get(timeout=0.5)\n"
         "except TimeoutError:\n    print('pending')", call_id],
        env=cluster.env, text=True, capture_output=True, timeout=60)
    assert pending.stdout.strip() == "pending", pending.stderr
    cluster.burst("app", "stop", "visible-app", check=True)
    listing = json.loads(cluster.burst("app", "list", "--json", check=True).stdout)
    assert not any(a["app"] == "visible-app" for a in listing["apps"])
    gone = cluster.burst("app", "status", "visible-app")
    assert gone.returncode != 0 and "not deployed" in gone.stderr
