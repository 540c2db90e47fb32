"""The runtime contract, end to end, against both runtimes: `burst up --runtime process` and
`burst up --runtime docker` run the same functions with the same promises (results, errors
with class and traceback, out-of-memory reported, a pids limit, no network, a non-root uid,
images).

The Docker cluster needs a Docker engine (``DOCKER_HOST`` or the default socket); it builds
the base image (deploy/base-image.sh) if missing. Without an engine the Docker tests skip,
except under ``CI``, where they fail.
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

pytestmark = pytest.mark.e2e

#: The containers' pids limit in these clusters (small, so a fork bomb reaches it cheaply).
PIDS_LIMIT = 64


def docker_missing() -> str:
    """Why no Docker engine can be used here, or ""."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as e:  # no SDK, no engine, no permission
        return f"no Docker engine answers ({e})"
    return ""


@pytest.fixture(scope="module", params=["process", "docker"])
def runtime_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    runtime = request.param
    if runtime == "docker" and (why := docker_missing()):
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    home = Path(tempfile.mkdtemp(prefix=f"burst-home-{runtime}-", dir="/var/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(FAST_TIMERS, BURST_HOME=str(home), HOME=str(home),
               BURST_CONTAINER_PIDS_LIMIT=str(PIDS_LIMIT))
    c = Cluster(home, env)
    c.runtime = runtime  # type: ignore[attr-defined]
    up = c.burst("up", "--runtime", runtime, "--gpus", "H100:2", timeout=300)
    if up.returncode != 0:
        c.burst("down")
        raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
    yield c
    down = c.burst("down", timeout=60)
    assert down.returncode == 0, down.stderr
    shutil.rmtree(home, ignore_errors=True)


APP = '''
import json, os, socket

import burst

app = burst.App("contract")

with_env = burst.Image.debian_slim().env({"GREETING": "hello from the image"})
with_six = burst.Image.debian_slim().pip_install("six==1.16.0").add_local_python_source("helper")
with_cmds = burst.Image.debian_slim().run_commands("echo built > /opt/marker")
failing = burst.Image.debian_slim().run_commands("echo about to fail", "exit 3")
absent = burst.Image.from_registry("not-on-this-engine:1.0")
no_such_pkg = burst.Image.debian_slim().pip_install("burst-no-such-package-xyz==0.0.1")


@app.function(scaledown_window=5)
def square(x):
    print(f"squaring {x}")
    return x * x


class Oops(ValueError):
    pass


@app.function(scaledown_window=5)
def fail(x):
    raise Oops(f"bad value {x}")


@app.function(scaledown_window=5)
def probe(port):
    out = {"uid": os.getuid(), "home": os.environ.get("HOME")}
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        out["tcp"] = "connected"
    except OSError as e:
        out["tcp"] = type(e).__name__
    with open("/proc/self/status") as f:
        out["caps"] = [ln.split()[1] for ln in f if ln.startswith(("CapEff", "CapPrm", "CapBnd"))]
    with open("/proc/self/status") as f:
        out["no_new_privs"] = [ln.split()[1] for ln in f if ln.startswith("NoNewPrivs")]
    try:
        open("written_into_bundle", "w").close()
        out["bundle_write"] = "written"
    except OSError as e:
        out["bundle_write"] = type(e).__name__
    return out


@app.function(memory=64, scaledown_window=2)
def hog():
    chunks = []
    for _ in range(64):
        chunks.append(bytearray(16 << 20))
    return len(chunks)


@app.function(timeout=10, scaledown_window=2)
def bomb(cap, hold):
    # A thread bomb with a hard cap: threads that wait, until cap of them, a failed start
    # or 5 s; held for hold seconds (the platform kills it at 10 s), then let go.
    import threading, time
    go = threading.Event()
    started, error = 0, ""
    deadline = time.monotonic() + 5
    while started < cap and time.monotonic() < deadline:
        try:
            threading.Thread(target=go.wait, daemon=True).start()
        except RuntimeError as e:  # the clone failed (EAGAIN)
            error = str(e)
            break
        started += 1
    held = [time.time()]
    time.sleep(hold)
    held.append(time.time())
    go.set()
    return {"started": started, "error": error, "held": held}


@app.function(gpu="H100:2", scaledown_window=2)
def gpus():
    return [os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("NVIDIA_VISIBLE_DEVICES")]


@app.function(image=with_env, scaledown_window=2)
def greeting():
    return os.environ.get("GREETING")


@app.function(image=with_env, scaledown_window=2, secrets=[
    burst.Secret.from_dict({"GREETING": "hello from a secret", "TOKEN": "first"}),
    burst.Secret.from_dict({"TOKEN": "second"})])
def secret_greeting():
    return [os.environ.get("GREETING"), os.environ.get("TOKEN")]


@app.function(image=with_six, scaledown_window=2)
def six_version():
    import helper
    import six
    return [six.__version__, helper.ANSWER]


@app.function(image=with_cmds, scaledown_window=2)
def marker():
    return open("/opt/marker").read().strip()


@app.function(image=failing, scaledown_window=2)
def broken():
    return "ran"


@app.cls(scaledown_window=1)
class Model:
    @burst.enter()
    def load(self):
        print("enter ran")

    @burst.method()
    def ping(self):
        return "pong"

    @burst.exit()
    def close(self):
        print("exit ran")


@app.function(image=absent, scaledown_window=2)
def registry():
    return "ran"


@app.function(image=no_such_pkg, scaledown_window=2)
def missing_pkg():
    return "ran"


PORT = @PORT@
PIDS_LIMIT = @PIDS_LIMIT@


def report(what):
    try:
        value = what()
    except Exception as e:
        value = {"error": type(e).__name__, "message": str(e),
                 "traceback": "".join(getattr(e, "__notes__", []))}
    print("RESULT", json.dumps(value))


@app.local_entrypoint()
def square_main():
    report(lambda: square.remote(7))


@app.local_entrypoint()
def fail_main():
    report(lambda: fail.remote(3))


@app.local_entrypoint()
def probe_main():
    report(lambda: probe.remote(PORT))


@app.local_entrypoint()
def lifecycle_main():
    import time
    report(Model().ping.remote)
    time.sleep(4)  # idle past the scaledown window: SIGTERM, and @exit runs


@app.local_entrypoint()
def bomb_main():
    import subprocess, time
    square.remote(1)  # the other function's container is up first
    call = bomb.spawn(2 * PIDS_LIMIT, 4.0)
    pings, forks, out = [], [], None
    deadline = time.time() + 60
    while out is None and time.time() < deadline:
        t0 = time.time()
        pings.append([t0, time.time(), square.remote(3)])
        t0 = time.time()
        forks.append([t0, time.time(), subprocess.run(["true"]).returncode])
        try:
            out = call.get(timeout=0.2)
        except TimeoutError:
            pass
    print("RESULT", json.dumps({"bomb": out, "pings": pings, "forks": forks}))


@app.local_entrypoint()
def hog_main():
    report(hog.remote)


@app.local_entrypoint()
def gpus_main():
    report(gpus.remote)


@app.local_entrypoint()
def greeting_main():
    report(greeting.remote)


@app.local_entrypoint()
def secret_main():
    report(secret_greeting.remote)


@app.local_entrypoint()
def six_main():
    report(six_version.remote)


@app.local_entrypoint()
def marker_main():
    report(marker.remote)


@app.local_entrypoint()
def broken_main():
    report(broken.remote)


@app.local_entrypoint()
def registry_main():
    report(registry.remote)


@app.local_entrypoint()
def missing_pkg_main():
    report(missing_pkg.remote)
'''


def write(c: Cluster, tmp_path: Path) -> Path:
    app = tmp_path / "contract_app.py"
    (tmp_path / "helper.py").write_text("ANSWER = 42\n")
    port = urlparse(c.profile["url"]).port
    app.write_text(textwrap.dedent(APP).replace("@PORT@", repr(port))
                   .replace("@PIDS_LIMIT@", repr(PIDS_LIMIT)))
    return app


def run(c: Cluster, tmp_path: Path, entry: str, timeout: float = 120) -> object:
    app = write(c, tmp_path)
    proc = c.burst("run", f"{app}::{entry}", check=True, timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):])


def runtime(c: Cluster) -> str:
    return str(c.runtime)  # type: ignore[attr-defined]


def test_result_and_output(runtime_cluster: Cluster, tmp_path: Path) -> None:
    assert run(runtime_cluster, tmp_path, "square_main") == 49


def test_exception_keeps_class_and_traceback(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "fail_main")
    assert isinstance(out, dict)
    assert out["error"] == "Oops" and out["message"] == "bad value 3", out
    assert "in fail" in out["traceback"], out


def test_confined(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "probe_main")
    assert isinstance(out, dict), out
    assert out["tcp"] != "connected", out  # no network, not even the gateway on loopback
    assert out["uid"] != 0, out
    assert out["caps"] == ["0000000000000000"] * 3, out
    assert out["bundle_write"] in ("OSError", "PermissionError"), out
    if runtime(runtime_cluster) == "docker":
        assert out["no_new_privs"] == ["1"], out


def test_enter_and_exit_on_sigterm(runtime_cluster: Cluster, tmp_path: Path) -> None:
    app = write(runtime_cluster, tmp_path)
    proc = runtime_cluster.burst("run", f"{app}::lifecycle_main", check=True)
    lines = proc.stdout.splitlines()
    assert "[model] enter ran" in lines and "[model] exit ran" in lines, proc.stdout


def test_out_of_memory_is_reported(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "hog_main")
    assert isinstance(out, dict), out
    assert "container killed: out of memory (limit 64 MiB)" in out["message"], out


def test_fork_bomb_stops_at_the_pids_limit(runtime_cluster: Cluster, tmp_path: Path) -> None:
    """A thread bomb in one container stops at the container's pids limit, while another
    function's container keeps answering and the host can still fork. Bounded if the limit
    is broken: the bomb stops at twice the limit by itself, and its timeout is 10 s."""
    out = run(runtime_cluster, tmp_path, "bomb_main")
    assert isinstance(out, dict), out
    bomb = out["bomb"]
    assert bomb is not None, out
    # The shim's own threads (and tini, or bwrap) count too: a little less than the limit.
    assert PIDS_LIMIT // 2 < bomb["started"] < PIDS_LIMIT, bomb
    assert bomb["error"] == "can't start new thread", bomb
    start, end = bomb["held"]
    # While the bomb held its threads: the other container answered, the host forked.
    assert all(p[2] == 9 for p in out["pings"]), out["pings"]
    assert any(start <= p[0] and p[1] <= end for p in out["pings"]), (bomb, out["pings"])
    assert all(f[2] == 0 for f in out["forks"]), out["forks"]
    assert any(start <= f[0] and f[1] <= end for f in out["forks"]), (bomb, out["forks"])


def test_assigned_gpus_named(runtime_cluster: Cluster, tmp_path: Path) -> None:
    # A declared inventory (no real GPUs): the assigned indices are named all the same.
    out = run(runtime_cluster, tmp_path, "gpus_main")
    assert isinstance(out, list) and out[0] == "0,1", out
    if runtime(runtime_cluster) == "docker":
        assert out[1] == "0,1", out


def test_image_env(runtime_cluster: Cluster, tmp_path: Path) -> None:
    assert run(runtime_cluster, tmp_path, "greeting_main") == "hello from the image"


def test_secrets_in_the_environment(runtime_cluster: Cluster, tmp_path: Path) -> None:
    # Secrets override the image's variables, and a later secret an earlier one's key.
    assert run(runtime_cluster, tmp_path, "secret_main") == ["hello from a secret", "second"]


def test_pip_install_and_local_source(runtime_cluster: Cluster, tmp_path: Path) -> None:
    # From the machine's package index: in a Docker build, or a cached virtual environment.
    out = run(runtime_cluster, tmp_path, "six_main", timeout=300)
    assert out == ["1.16.0", 42], out


def test_run_commands_step(runtime_cluster: Cluster, tmp_path: Path) -> None:
    # Docker: a Dockerfile RUN; process: a layer of the image's root filesystem.
    out = run(runtime_cluster, tmp_path, "marker_main", timeout=300)
    assert out == "built", out


def test_failed_build_names_the_step(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "broken_main", timeout=300)
    assert isinstance(out, dict), out
    if runtime(runtime_cluster) == "docker":
        assert "image build failed at run_commands(" in out["message"], out
        assert "'exit 3'" in out["message"], out
        assert "about to fail" in out["traceback"] or "exit 3" in out["message"], out
    else:
        assert "image build failed at run_commands(" in out["message"], out
        assert "'exit 3'" in out["message"] and "exit code 3" in out["message"], out


def test_registry_image_must_be_present(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "registry_main")
    assert isinstance(out, dict), out
    assert "Image.from_registry('not-on-this-engine:1.0')" in out["message"], out
    # Both runtimes take it from the agent's Docker engine (there is no registry).
    assert "not on this agent's Docker engine" in out["message"], out


def test_failed_pip_install_names_the_step(runtime_cluster: Cluster, tmp_path: Path) -> None:
    out = run(runtime_cluster, tmp_path, "missing_pkg_main", timeout=300)
    assert isinstance(out, dict), out
    assert "image build failed at pip_install('burst-no-such-package-xyz==0.0.1')" \
        in out["message"], out


def test_shell_and_exec_run_inside_the_functions_container(
        runtime_cluster: Cluster, tmp_path: Path) -> None:
    """`burst shell` and `burst container exec` (issue 20) on each runtime: inside the
    function's container, with its image's and secrets' variables, its uid; the exit code
    comes back."""
    import subprocess
    import sys

    from tests.e2e.conftest import BURST

    c = runtime_cluster
    # The contract app also has functions whose images are built to fail: `burst deploy`
    # deploys the app and then exits 1 naming those builds.
    deployed = c.burst("deploy", str(write(c, tmp_path)), timeout=240)
    assert "Deployed app contract" in deployed.stderr, (deployed.stdout, deployed.stderr)
    try:
        shell = subprocess.run([BURST, "shell", "contract::secret_greeting"], env=c.env,
                               input='echo "$GREETING/$TOKEN"; id -u; exit 3\n', text=True,
                               capture_output=True, timeout=240)
        assert shell.returncode == 3, shell.stderr
        assert shell.stdout.splitlines() == ["hello from a secret/second", "65534"], shell
        code = "import burst\nprint(burst.Function.from_name('contract', 'square').remote(3))"
        call = subprocess.run([sys.executable, "-c", code], env=c.env, text=True,
                              capture_output=True, timeout=120)
        assert call.stdout.strip() == "9", call.stderr
        listing = json.loads(c.burst("container", "list", "--app", "contract", "--json",
                                     check=True).stdout)
        cid = next(x["container_id"] for x in listing["containers"]
                   if x["function"] == "square")
        done = c.burst("container", "exec", cid, "--", "sh", "-c", "echo in $PWD; exit 5")
        assert done.returncode == 5 and done.stdout.startswith("in /"), done.stderr
    finally:
        c.burst("app", "stop", "contract")


LOCAL_FILES_APP = '''
import json, os

import burst

app = burst.App("local-files")

# copy=False (Modal's default): bound read-only as each container starts, not built.
image = (burst.Image.debian_slim().run_commands("echo @TOKEN@ > /opt/built")
         .add_local_file(@CFG@, "/opt/conf/settings.txt")
         .add_local_dir(@DIR@, "/srv/local"))


@app.function(image=image, scaledown_window=2)
def read_local():
    out = {"file": open("/opt/conf/settings.txt").read(),
           "dir": sorted(os.listdir("/srv/local")),
           "nested": open("/srv/local/sub/b.txt").read(),
           "built": open("/opt/built").read().strip()}
    # How each is mounted: a read-only mount of its own.
    with open("/proc/self/mountinfo") as f:
        opts = {ln.split()[4]: ln.split()[5].split(",")[0] for ln in f}
    out["mount_file"] = opts.get("/opt/conf/settings.txt", "none")
    out["mount_dir"] = opts.get("/srv/local", "none")
    return out


@app.local_entrypoint()
def main():
    print("RESULT", json.dumps(read_local.remote()))
'''


def test_a_changed_local_file_is_mounted_with_no_build(runtime_cluster: Cluster,
                                                       tmp_path: Path) -> None:
    """``add_local_file/dir(copy=False)`` is bound read-only into each container at its start:
    a changed file reaches the next container with no image build."""
    import uuid

    token = uuid.uuid4().hex[:10]
    cfg, tree = tmp_path / "settings.txt", tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    app = tmp_path / "local_files_app.py"
    app.write_text(LOCAL_FILES_APP.replace("@TOKEN@", token).replace("@CFG@", repr(str(cfg)))
                   .replace("@DIR@", repr(str(tree))))

    def once(version: str) -> tuple[dict[str, object], str]:
        cfg.write_text(f"settings {version}")
        (tree / "sub" / "b.txt").write_text(f"nested {version}")
        proc = runtime_cluster.burst("run", f"{app}::main", check=True, timeout=400)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert line is not None, proc.stdout + proc.stderr
        return json.loads(line[len("RESULT "):]), proc.stdout + proc.stderr

    first, logs1 = once("one")
    assert first == {"file": "settings one", "dir": ["a.txt", "sub"], "nested": "nested one",
                     "built": token, "mount_file": "ro", "mount_dir": "ro"}, \
        (first, logs1)
    assert "[image build]" in logs1, logs1  # the image (its run_commands) was built once
    second, logs2 = once("two")
    assert second == {**first, "file": "settings two", "nested": "nested two"}, (second, logs2)
    # Nothing was built for the changed files: the image is the same one.
    assert "[image build]" not in logs2, logs2
