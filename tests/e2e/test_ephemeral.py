"""What an ephemeral app is, and how long it lives, on a real cluster.

A run of app X (`burst run`, `with app.run():`) has an id of its own and carries X's name;
it lives while its client heartbeats. Settings are small (heartbeat 0.5 s, deadline 3 s),
so a killed client's run is stopped within seconds; a gateway restart (the supervisor
brings it back) stops nothing; `--detach` outlives the client until `burst app stop`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BURST, Cluster, running_cluster
from tests.e2e.test_budgets import containers_of, request
from tests.e2e.test_supervise import part
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 3.0
SETTINGS = {
    "BURST_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
    "BURST_CLIENT_HEARTBEAT_INTERVAL": "0.5",
    "BURST_CLIENT_REAP_INTERVAL": "0.25",
    "BURST_SUPERVISE_BACKOFF": "0.2",
}
#: How much later than the deadline a loaded 2-core machine may stop a run.
MARGIN = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, **SETTINGS)


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


class Proc:
    """A client process whose stdout lines are read as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 90.0) -> str:
        """The first line (from now on) starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.p.poll() is not None and self.lines.empty():
                err = self.p.stderr.read() if self.p.poll() is not None and self.p.stderr else ""
                raise AssertionError(f"no line {prefix!r} within {timeout} s; seen: "
                                     f"{self.seen}; stderr: {err}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(30)


def apps(c: Cluster) -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(c.burst("app", "list", "--json", check=True).stdout)
    return data["apps"]  # type: ignore[no-any-return]


def run_ids(c: Cluster, name: str) -> set[str]:
    return {a["app"] for a in apps(c) if a["name"] == name and a["ephemeral"]}


def call_status(c: Cluster, call_id: str) -> dict[str, Any]:
    code, body = request(c, c.profile["token"], "GET", f"/v1/calls/{call_id}?wait=0")
    assert code in (200, 202), (code, body)
    return body  # type: ignore[no-any-return]


def python(c: Cluster, code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=c.env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


SLOW = """
    import time
    import burst

    app = burst.App("eph-slow")

    @app.function(max_containers=1, timeout=120)
    def slow(x):
        time.sleep(90)
        return x

    @app.local_entrypoint()
    def main():
        calls = [slow.spawn(i) for i in range(4)]
        print("APP", app.app_id, flush=True)
        for c in calls:
            print("CALL", c.object_id, flush=True)
        print("READY", flush=True)
        time.sleep(600)
"""


def test_a_killed_client_s_run_is_stopped_and_its_calls_cancelled(
    cluster: Cluster, tmp_path: Path
) -> None:
    proc = Proc([BURST, "run", str(write(tmp_path, "eph_slow.py", SLOW))], cluster.env)
    try:
        app_id = proc.expect("APP").split()[1]
        calls = [proc.expect("CALL").split()[1] for _ in range(4)]
        proc.expect("READY")
        # One call runs (max_containers=1), three wait in the queue.
        eventually(lambda: containers_of(cluster, f"default.{app_id}."), 60,
                   "the run's container started")
        assert app_id.startswith("ap-") and run_ids(cluster, "eph-slow") == {app_id}
    finally:
        proc.p.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.kill()

    def all_cancelled() -> bool:
        return all(call_status(cluster, cid)["status"] == "terminated" for cid in calls)

    eventually(all_cancelled, CLIENT_TIMEOUT + MARGIN, "every call of the run cancelled",
               step=0.1)
    took = time.monotonic() - killed
    print(f"calls cancelled {took:.2f} s after the client was killed "
          f"(deadline {CLIENT_TIMEOUT} s)")
    assert took >= CLIENT_TIMEOUT - 1.0  # not before the deadline (less a beat's interval)
    for cid in calls:
        err = call_status(cluster, cid)["error"]
        assert err["type"].endswith("InputCancellation"), err
    eventually(lambda: not containers_of(cluster, f"default.{app_id}."), 30,
               "the run's container stopped")
    assert run_ids(cluster, "eph-slow") == set()


WAITER = """
    import os, time
    import burst

    app = burst.App("eph-waiter")

    @app.function()
    def square(x):
        return x * x

    @app.local_entrypoint()
    def main(flag: str):
        print("FIRST", square.remote(3), flush=True)
        print("APP", app.app_id, flush=True)
        deadline = time.time() + 100
        while not os.path.exists(flag) and time.time() < deadline:
            time.sleep(0.1)
        print("AFTER", square.remote(4), flush=True)
"""


def test_a_gateway_restart_during_a_run_stops_nothing(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    proc = Proc([BURST, "run", str(write(tmp_path, "eph_waiter.py", WAITER)),
                 "--flag", str(flag)], cluster.env)
    try:
        assert proc.expect("FIRST") == "FIRST 9"
        app_id = proc.expect("APP").split()[1]
        gateway = part(cluster, "gateway")
        os.kill(gateway["pid"], signal.SIGKILL)
        eventually(lambda: part(cluster, "gateway").get("restarts") == 1, 30,
                   "the supervisor restarted the gateway")
        back = eventually(lambda: _try_apps(cluster), 60, "the gateway answers again")
        restarted = time.time()
        # Well past the deadline: the client's heartbeats went on through the new gateway.
        time.sleep(2 * CLIENT_TIMEOUT)
        [run] = [a for a in apps(cluster) if a["app"] == app_id]
        assert run["heartbeat_at"] > restarted and run["heartbeats"] > 0, (run, back)
        flag.write_text("")
        assert proc.expect("AFTER") == "AFTER 16"
        assert proc.p.wait(60) == 0
    finally:
        proc.kill()


def _try_apps(c: Cluster) -> list[dict[str, Any]] | None:
    out = c.burst("app", "list", "--json")
    return json.loads(out.stdout)["apps"] if out.returncode == 0 else None  # type: ignore[no-any-return]


DETACHED = """
    import burst

    app = burst.App("eph-detached")

    @app.function()
    def square(x):
        return x * x

    @app.local_entrypoint()
    def main():
        print("APP", app.app_id, square.remote(5), flush=True)
"""


def test_a_detached_run_outlives_its_client_until_app_stop(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    out = cluster.burst("run", "--detach", str(write(tmp_path, "eph_detached.py", DETACHED)),
                        check=True)
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("APP ")]
    _, app_id, result = line.split()
    assert result == "25"
    time.sleep(2 * CLIENT_TIMEOUT)  # the client is gone; a non-detached run would be too
    [run] = [a for a in apps(cluster) if a["app"] == app_id]
    assert run["name"] == "eph-detached" and run["ephemeral"] and run["detached"], run
    token = cluster.profile["token"]
    code, body = request(cluster, token, "POST",
                         f"/v1/apps/{app_id}/functions/square/calls?wait=60", {"args": [6]})
    assert code == 200 and body["result"] == 36, body
    cluster.burst("app", "stop", app_id, check=True)
    assert run_ids(cluster, "eph-detached") == set()
    code, body = request(cluster, token, "POST",
                         f"/v1/apps/{app_id}/functions/square/calls?wait=5", {"args": [6]})
    assert code == 404, body


TWIN = """
    import os, time
    import burst

    app = burst.App("eph-twin")

    @app.function()
    def which():
        return os.environ.get("BURST_APP_ID"), os.environ.get("BURST_APP_NAME")

    @app.local_entrypoint()
    def main(flag: str):
        print("APP", app.app_id, flush=True)
        print("SEES", *which.remote(), flush=True)
        try:
            burst.Function.from_name("eph-twin", "which").remote()
            print("FROM_NAME found", flush=True)
        except burst.exception.NotFoundError:
            print("FROM_NAME not found", flush=True)
        try:
            burst.Function.from_name(app.app_id, "which")
            print("FROM_ID found", flush=True)
        except burst.exception.InvalidError:
            print("FROM_ID refused", flush=True)
        deadline = time.time() + 100
        while not os.path.exists(flag) and time.time() < deadline:
            time.sleep(0.1)
"""


def test_two_runs_of_an_app_at_once_and_from_name_finds_neither(
    cluster: Cluster, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    path = str(write(tmp_path, "eph_twin.py", TWIN))
    procs = [Proc([BURST, "run", path, "--flag", str(flag)], cluster.env) for _ in range(2)]
    try:
        ids = []
        for p in procs:
            app_id = p.expect("APP").split()[1]
            # The container knows its run's id (and name): what its calls go through.
            assert p.expect("SEES") == f"SEES {app_id} eph-twin"
            assert p.expect("FROM_NAME") == "FROM_NAME not found"
            assert p.expect("FROM_ID") == "FROM_ID refused"
            ids.append(app_id)
        assert len(set(ids)) == 2
        assert run_ids(cluster, "eph-twin") == set(ids)
        status = json.loads(cluster.burst("app", "status", "eph-twin", "--json",
                                          check=True).stdout)
        assert status["name"] == "eph-twin" and status["app"] in ids and status["ephemeral"]
        flag.write_text("")
        for p in procs:
            assert p.p.wait(60) == 0
        assert run_ids(cluster, "eph-twin") == set()
    finally:
        for p in procs:
            p.kill()


CAPPED = """
    import time
    import burst

    app = burst.App("eph-capped")

    @app.function(scaledown_window=600)
    def work(x):
        return x + 1

    @app.local_entrypoint()
    def main():
        print("FIRST", work.remote(1), flush=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                work.remote(1)
            except burst.exception.BudgetExceededError as e:
                print("REFUSED", e, flush=True)
                return
            time.sleep(0.3)
        print("NEVER REFUSED", flush=True)
"""


def test_a_hard_budget_on_the_app_stops_its_run(cluster: Cluster, tmp_path: Path) -> None:
    cluster.burst("budget", "set", "eph-capped", "--limit", "0.000001", "--hard", check=True)
    try:
        out = cluster.burst("run", str(write(tmp_path, "eph_capped.py", CAPPED)))
        assert "FIRST 2" in out.stdout, out.stdout + out.stderr
        assert "REFUSED" in out.stdout, out.stdout + out.stderr
        assert "'eph-capped'" in out.stdout
    finally:
        cluster.burst("budget", "clear", "eph-capped", check=True)


OBJECTS = """
    import time
    import burst

    with (burst.Dict.ephemeral({"k": 1}) as d, burst.Queue.ephemeral() as q,
          burst.Volume.ephemeral() as v):
        q.put(1)
        with v.batch_upload() as b:
            b.put_file(__import__("io").BytesIO(b"v"), "f.txt")
        print("NAMES", d.name, q.name, v.name, flush=True)
        time.sleep(600)
"""


def test_ephemeral_objects_of_a_killed_client_are_removed(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    proc = Proc([sys.executable, str(write(tmp_path, "eph_objects.py", OBJECTS))], cluster.env)
    try:
        _, dname, qname, vname = proc.expect("NAMES").split()
        check = f"""
            import burst
            try:
                value = burst.Dict.from_name({dname!r}).get("k")
            except burst.exception.NotFoundError:
                value = "gone"
            try:
                files = len(burst.Volume.from_name({vname!r}).listdir("/"))
            except burst.exception.NotFoundError:
                files = "gone"
            print(value, burst.Queue.from_name({qname!r}).len(), files)
        """
        assert python(cluster, check).split() == ["1", "1", "1"]  # alive with its client
    finally:
        proc.kill()
    eventually(lambda: python(cluster, check).split() == ["gone", "0", "gone"],
               CLIENT_TIMEOUT + MARGIN,
               "the killed client's ephemeral Dict, Queue and Volume removed", step=0.5)


LOUD = """
    import burst

    app = burst.App("eph-loud")

    @app.function()
    def shout(word):
        print("remote says", word)
        return word

    if __name__ == "__main__":
        with app.run():
            shout.remote("quiet")
        print("--", flush=True)
        with burst.enable_output():
            with app.run():
                shout.remote("loud")
"""


def test_enable_output_shows_remote_output_in_a_script(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(write(tmp_path, "eph_loud.py", LOUD))],
                         env=cluster.env, text=True, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, _, after = out.stdout.partition("--\n")
    assert "remote says" not in before, out.stdout
    assert "[shout] remote says loud" in after, out.stdout
