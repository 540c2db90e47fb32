"""A container frozen with SIGSTOP past its heartbeat timeout: its call runs again in
another container, and when the frozen one is resumed its late output is refused; then
the shared invariant checker (one result, from the current attempt, nothing charged
twice, claims released)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import _host_pids, write_app
from tests.reliability.checker import Accepted, check

pytestmark = pytest.mark.e2e

APP = """
    import os, time
    import burst

    app = burst.App("frozen")
    seen = burst.Dict.from_name("frozen-seen", create_if_missing=True)

    @app.function(max_containers=2, scaledown_window=2)
    def slow(tag):
        cid = os.environ["BURST_CONTAINER_ID"]
        seen[f"{tag}:{cid}"] = time.time()
        seen[tag] = cid
        # Held until the test says (key tag + ":go"), at most 60 s: a 4 s call could end,
        # on a loaded machine, before the test (a new Python process that polls the
        # Dict) had frozen it.
        end = time.time() + 60
        while time.time() < end and not seen.get(f"{tag}:go"):
            time.sleep(0.1)
        return cid
"""


def py(cluster: Cluster, code: str, timeout: float = 90) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=cluster.env, text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_faultless_pass(cluster: Cluster, tmp_path: Path) -> None:
    """The same app, one call, nothing frozen: what the fault test must still meet."""
    app = write_app(tmp_path, APP.replace('"frozen"', '"frozen-ok"'), "frozen_ok_app.py")
    cluster.burst("deploy", str(app), check=True)
    out = py(cluster, "import burst\n"
                      "d = burst.Dict.from_name('frozen-seen', create_if_missing=True)\n"
                      "d['ok:go'] = 1\n"
                      "call = burst.Function.from_name('frozen-ok', 'slow').spawn('ok')\n"
                      "print(call.object_id, call.get(timeout=60))")
    call_id, result = out.split()
    assert result.startswith("ct-"), out
    summary = check(cluster.home, "frozen-ok", ["slow"], [Accepted(call_id, result)])
    assert summary["containers"] == 1, summary


def test_frozen_container_is_replaced_and_its_late_output_refused(cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    app = write_app(tmp_path, APP, "frozen_app.py")
    cluster.burst("deploy", str(app), check=True)
    tag = f"t{int(time.time() * 1000)}"
    call_id = py(cluster, f"import burst; print(burst.Function.from_name('frozen', 'slow')"
                          f".spawn({tag!r}).object_id)")
    first = py(cluster, "import burst, time\n"
                        "d = burst.Dict.from_name('frozen-seen', create_if_missing=True)\n"
                        "deadline = time.time() + 60\n"
                        f"while d.get({tag!r}) is None and time.time() < deadline: "
                        "time.sleep(0.1)\n"
                        f"print(d.get({tag!r}))")
    assert first.startswith("ct-"), first
    pids = _host_pids(first)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # Frozen: the call may end now (in the replacement; in the frozen one once thawed).
        py(cluster, "import burst\n"
                    "d = burst.Dict.from_name('frozen-seen', create_if_missing=True)\n"
                    f"d[{tag + ':go'!r}] = 1")
        result = py(cluster, f"import burst; print(burst.FunctionCall.from_id({call_id!r})"
                             ".get(timeout=60))")
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert result.startswith("ct-") and result != first  # it ran again, elsewhere
    # The thawed container finishes its sleep and answers: that late output is refused.
    deadline = time.time() + 20
    while "late_output_refused" not in cluster.log("agent") and time.time() < deadline:
        time.sleep(0.25)
    assert "late_output_refused" in cluster.log("agent")
    again = py(cluster, f"import burst; print(burst.FunctionCall.from_id({call_id!r}).get())")
    assert again == result  # the call's one result did not change
    deadline = time.time() + 20
    while _host_pids(first) and time.time() < deadline:
        time.sleep(0.25)
    assert not _host_pids(first), "the thawed container was not stopped"
    summary = check(cluster.home, "frozen", ["slow"], [Accepted(call_id, result)])
    assert summary["containers"] == 2, summary  # the frozen one and its replacement
