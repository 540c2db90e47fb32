"""The process runtime's sandbox, end to end: what user code can and cannot do.

A cluster from `burst up --gpus H100:2` with ``BURST_SANDBOX=on``; functions report what
they see from inside their containers. Without bubblewrap these tests skip, except under
``CI``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import FAST_TIMERS, Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["fresh", "zygote"])
def sandboxed(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Containers as fresh interpreters in bwrap, then as forks of the zygote."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI"):
            pytest.fail("bubblewrap (bwrap) is not installed, and CI is set")
        pytest.skip("bubblewrap (bwrap) is not installed")
    # Not under /tmp (the container's private /tmp would cover it anyway): the tmpfs over
    # $BURST_HOME itself must do the hiding.
    home = Path(tempfile.mkdtemp(prefix="burst-home-sandbox-", dir="/var/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(FAST_TIMERS, BURST_HOME=str(home), HOME=str(home), BURST_SANDBOX="on",
               BURST_ZYGOTE="1" if request.param == "zygote" else "0")
    c = Cluster(home, env)
    try:
        up = c.burst("up", "--gpus", "H100:2", timeout=180)
        if up.returncode != 0:
            c.burst("down")
            raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
        yield c
        down = c.burst("down", timeout=60)
        assert down.returncode == 0, down.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


APP = '''
import json, os, socket, sys

import burst

app = burst.App("sandbox")


@app.function(scaledown_window=5)
def probe(burst_home, port):
    out = {"uid": os.getuid(), "euid": os.geteuid(), "home": os.environ.get("HOME"),
           "cwd": os.getcwd()}
    try:
        with open(os.path.join(burst_home, "profile.json")) as f:
            out["profile"] = f.read()
    except OSError as e:
        out["profile"] = type(e).__name__
    try:
        out["home_listing"] = os.listdir(burst_home)
    except OSError as e:
        out["home_listing"] = type(e).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        out["tcp"] = "connected"
    except OSError as e:
        out["tcp"] = type(e).__name__
    try:
        open("/etc/shadow").read()
        out["shadow"] = "read"
    except OSError as e:
        out["shadow"] = type(e).__name__
    with open("/proc/self/status") as f:
        out["caps"] = [ln.split()[1] for ln in f if ln.startswith(("CapEff", "CapPrm", "CapBnd"))]
    with open("/tmp/scratch", "w") as f:
        f.write("ok")
    out["tmp_write"] = open("/tmp/scratch").read()
    try:
        open("written_into_bundle", "w").close()
        out["bundle_write"] = "written"
    except OSError as e:
        out["bundle_write"] = type(e).__name__
    return out


@app.function(gpu="H100:2", scaledown_window=2)
def gpus():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@app.function(memory=64, scaledown_window=2)
def hog():
    chunks = []
    for _ in range(64):
        chunks.append(bytearray(16 << 20))  # touched: bytearray zero-fills its pages
    return len(chunks)


BURST_HOME = @BURST_HOME@
PORT = @PORT@


def report(what):
    try:
        value = what()
    except Exception as e:
        value = f"{type(e).__name__}: {e}"
    print("RESULT", json.dumps(value))


@app.local_entrypoint()
def probe_main():
    report(lambda: probe.remote(BURST_HOME, PORT))


@app.local_entrypoint()
def gpus_main():
    report(gpus.remote)


@app.local_entrypoint()
def hog_main():
    report(hog.remote)
'''


def run(c: Cluster, tmp_path: Path, entry: str) -> object:
    app = tmp_path / "sandbox_app.py"
    port = urlparse(c.profile["url"]).port
    app.write_text(textwrap.dedent(APP).replace("@BURST_HOME@", repr(str(c.home)))
                   .replace("@PORT@", repr(port)))
    proc = c.burst("run", f"{app}::{entry}", check=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):])


def test_user_code_is_confined(sandboxed: Cluster, tmp_path: Path,
                               request: pytest.FixtureRequest) -> None:
    agent_log = sandboxed.home / "logs" / "agent.log"
    zygote = request.node.callspec.params["sandboxed"] == "zygote"
    if zygote:  # the probe's container takes the spare sandbox the agent made ahead
        eventually(lambda: "spare_sandbox_ready" in agent_log.read_text(), 60,
                   "the agent's spare sandbox")
    out = run(sandboxed, tmp_path, "probe_main")
    assert isinstance(out, dict), out
    # Burst's state is not there at all: neither the token file nor the dir.
    assert (sandboxed.home / "profile.json").exists()
    assert out["profile"] == "FileNotFoundError", out
    assert out["home_listing"] == "FileNotFoundError", out
    # No network: not even the gateway on loopback.
    assert out["tcp"] != "connected", out
    # A real non-root uid: root's files stay closed.
    assert out["uid"] != 0 and out["euid"] != 0, out
    # (The host's /etc/shadow is not in the container at all.)
    assert out["shadow"] == "FileNotFoundError", out
    assert out["caps"] == ["0000000000000000"] * 3, out
    # A private writable /tmp (also HOME); the bundle is read-only.
    assert out["home"] == "/tmp" and out["tmp_write"] == "ok", out
    assert out["bundle_write"] in ("OSError", "PermissionError"), out
    # With the zygote that container took the spare sandbox: the confinement above holds
    # there too.
    if zygote:
        log = agent_log.read_text().splitlines()
        forked = [json.loads(ln) for ln in log if '"container_forked"' in ln]
        assert forked and forked[0].get("spare") is True, forked


def test_cuda_visible_devices_from_placement(sandboxed: Cluster, tmp_path: Path) -> None:
    assert run(sandboxed, tmp_path, "gpus_main") == "0,1"


def test_out_of_memory_is_reported(sandboxed: Cluster, tmp_path: Path) -> None:
    out = run(sandboxed, tmp_path, "hog_main")
    assert isinstance(out, str)
    assert "container killed: out of memory (limit 64 MiB)" in out, out
