"""0 -> N -> 0 with Redis flushed while calls run: Redis is a cache, nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_zero_to_n_to_zero_with_redis_flushed_midway(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import os, time
        import burst

        app = burst.App("scaling-n")

        @app.function(scaledown_window=1, max_containers=3, cpu=0.05)
        def work(i):
            time.sleep(0.05)
            return [i, os.environ["BURST_CONTAINER_ID"]]
    """, "scaling_n_app.py")
    cluster.burst("deploy", str(app), check=True)
    state = json.loads((cluster.home / "cluster.json").read_text())
    redis_port = next(p for p in state["parts"] if p["name"] == "redis")["ports"]["client"]

    def flush_later() -> None:
        import redis

        time.sleep(1.5)
        redis.Redis(port=redis_port).flushall()

    flusher = threading.Thread(target=flush_later)
    flusher.start()
    code = ("import burst, json\n"
            "f = burst.Function.from_name('scaling-n', 'work')\n"
            "print(json.dumps(list(f.map(range(300)))))\n")
    out = subprocess.run([sys.executable, "-c", code], env=cluster.env, text=True,
                         capture_output=True, timeout=180)
    flusher.join()
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r[0] for r in results] == list(range(300))  # every call, once, in order
    containers = {r[1] for r in results}
    assert 2 <= len(containers) <= 3  # it scaled out, within max_containers
    deadline = time.time() + 15
    while time.time() < deadline:
        status = json.loads(cluster.burst("app", "status", "scaling-n", "--json",
                                          check=True).stdout)
        running = sum(status["functions"][0]["containers"].values())
        if running == 0:
            break
        time.sleep(0.5)
    assert running == 0, status  # and back to zero after the window
