"""Images on the process runtime, end to end: the agent materialises the image as a root
filesystem (``rootfs.py``) and runs the container in it.

One cluster for the module (`burst up`, process runtime). Bases come from the CI base image
(``burst-base:py311``, exported from the local Docker engine, which CI runs) or are made by
debootstrap from the machine's Debian mirror (trixie for Python 3.13, once per machine);
layers are cached machine-wide, so every image here carries a token of this run where a
fresh build is what the test is about.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from burst_agent.runtimes import rootfs
from tests.e2e.conftest import Cluster, running_cluster

pytestmark = pytest.mark.e2e

#: A token of this test run: images that must be built here (not found cached) carry it.
TOKEN = uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A declared GPU (none real here): an image's container with GPUs gets the driver's dir.
    yield from running_cluster(tmp_path_factory, "--gpus", "H100:1", BURST_RUNTIME="process")


APP = '''
import json, os, shutil, subprocess, sys

import burst

app = burst.App("images-process")

tools = (burst.Image.debian_slim()
         .apt_install("curl")
         .run_commands("echo @TOKEN@ > /opt/marker", "mkdir -p /srv/data",
                       "grep CapEff /proc/self/status | cut -f2 > /opt/build-caps",
                       # The cluster's gateway, from a build step (never reachable).
                       "python3 -c 'import socket; s = socket.socket(); s.settimeout(3); "
                       "print(s.connect_ex((\\"127.0.0.1\\", @PORT@)))' > /opt/build-gateway")
         .env({"IMAGE_MODE": "tools"})
         .workdir("/srv/data"))
bad_cmd = burst.Image.debian_slim().run_commands("echo about to fail @TOKEN@", "exit 3")
bad_apt = burst.Image.debian_slim().apt_install("burst-no-such-package-@TOKEN@")
absent = burst.Image.from_registry("burst-no-such-image-@TOKEN@:1").run_commands("true")
registry = burst.Image.from_registry("python:3.11-slim").run_commands("echo @TOKEN@ > /opt/reg")
cached = (burst.Image.debian_slim()
          .run_commands("echo first @TOKEN@ > /opt/first")
          .run_commands("echo last @LAST@ > /opt/last"))
@VERSIONS@


@app.function(image=tools, scaledown_window=2)
def inspect_tools():
    curl = shutil.which("curl")
    version = subprocess.run([curl, "--version"], capture_output=True, text=True).stdout
    return {"marker": open("/opt/marker").read().strip(), "curl": curl,
            "build_caps": open("/opt/build-caps").read().strip(),
            "build_gateway": open("/opt/build-gateway").read().strip(),
            "curl_version": version.split()[:2], "mode": os.environ.get("IMAGE_MODE"),
            "cwd": os.getcwd(), "python": sys.version_info[:2],
            "uid": os.getuid(), "container_id": os.environ["BURST_CONTAINER_ID"],
            # What the host has and the image does not: Burst's checkout, the cluster's home.
            "host_files": [p for p in (@HOST_FILES@) if os.path.exists(p)]}


@app.function(image=tools, gpu="H100", scaledown_window=2)
def with_gpu():
    return [os.environ.get("CUDA_VISIBLE_DEVICES"), os.path.isdir("/run/burst/nvidia"),
            os.environ.get("LD_LIBRARY_PATH"), open("/opt/marker").read().strip()]


@app.function(image=bad_cmd, scaledown_window=2)
def broken_cmd():
    return "ran"


@app.function(image=absent, scaledown_window=2)
def absent_tag():
    return "ran"


@app.function(image=bad_apt, scaledown_window=2)
def broken_apt():
    return "ran"


@app.function(image=registry, scaledown_window=2)
def from_engine():
    return open("/opt/reg").read().strip()


@app.function(image=cached, scaledown_window=2)
def last_layer():
    return open("/opt/last").read().strip()


@VERSION_FUNCTIONS@


def report(what):
    try:
        value = what()
    except Exception as e:
        value = {"error": type(e).__name__, "message": str(e)}
    print("RESULT", json.dumps(value))


@app.local_entrypoint()
def tools_main():
    report(inspect_tools.remote)


@app.local_entrypoint()
def gpu_main():
    report(with_gpu.remote)


@app.local_entrypoint()
def broken_cmd_main():
    report(broken_cmd.remote)


@app.local_entrypoint()
def absent_tag_main():
    report(absent_tag.remote)


@app.local_entrypoint()
def broken_apt_main():
    report(broken_apt.remote)


@app.local_entrypoint()
def cached_main():
    report(last_layer.remote)


@app.local_entrypoint()
def registry_main():
    report(from_engine.remote)


@app.local_entrypoint()
def versions_main():
    report(lambda: {v: f.remote() for v, f in VERSION_FNS.items()})
'''


def available_versions() -> list[str]:
    return [v for v, suite in rootfs.DEBIAN_PYTHON.items()
            if (v in rootfs.DOCKER_BASES) or rootfs.mirror_has(suite)]


def write(tmp_path: Path, host_files: list[str], last: str = "one") -> Path:
    versions = available_versions()
    images = "\n".join(f"py{v.replace('.', '')} = burst.Image.debian_slim(python_version="
                       f"{v!r}).run_commands('true')" for v in versions)
    fns = "\n\n".join(textwrap.dedent(f'''
        @app.function(image=py{v.replace('.', '')}, scaledown_window=2)
        def version_{v.replace('.', '')}():
            apt = subprocess.run(["sh", "-c", "cat /etc/apt/sources.list.d/* "
                                  "/etc/apt/sources.list 2>/dev/null"],
                                 capture_output=True, text=True).stdout
            return ["%d.%d" % sys.version_info[:2], apt]
        ''') for v in versions)
    table = ", ".join(f"{v!r}: version_{v.replace('.', '')}" for v in versions)
    app = tmp_path / "images_app.py"
    app.write_text(APP.replace("@TOKEN@", TOKEN).replace("@LAST@", last)
                   .replace("@VERSIONS@", images)
                   .replace("@VERSION_FUNCTIONS@", fns + f"\n\nVERSION_FNS = {{{table}}}\n")
                   .replace("@HOST_FILES@", ", ".join(repr(p) for p in host_files) + ","))
    return app


def run(c: Cluster, tmp_path: Path, entry: str, last: str = "one",
        timeout: float = 600) -> tuple[object, str]:
    app = write(tmp_path, [str(Path(__file__).resolve()), str(c.home)], last)
    app.write_text(app.read_text().replace("@PORT@", str(urlparse(c.profile["url"]).port)))
    proc = c.burst("run", f"{app}::{entry}", timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):]), proc.stdout


@pytest.mark.timeout(600)
def test_apt_and_commands_in_the_function(cluster: Cluster, tmp_path: Path) -> None:
    out, logs = run(cluster, tmp_path, "tools_main")
    assert isinstance(out, dict) and "error" not in out, (out, logs)
    assert out["marker"] == TOKEN, out
    assert out["curl"] == "/usr/bin/curl" and out["curl_version"][0] == "curl", out
    assert out["mode"] == "tools" and out["cwd"] == "/srv/data", out
    assert out["uid"] != 0, out
    # Neither this checkout nor the cluster's home (host paths) exist in the image.
    assert out["host_files"] == [], out
    # The build was shown with each step's time.
    # (apt_install may come from the machine's cache; the step with this run's token not.)
    assert "[image build] Step 1/7: apt_install('curl')" in logs, logs
    assert "[image build] Step 2/7 took " in logs, logs
    # Build steps run as root, with Docker's default capabilities less mknod: no mounts
    # (CAP_SYS_ADMIN, bit 21), no device nodes (CAP_MKNOD, bit 27).
    caps = int(out["build_caps"], 16)
    assert caps & 1 and not caps & (1 << 21) and not caps & (1 << 27), out["build_caps"]
    # Build steps get the containers' network: the internet (apt above), not the cluster.
    assert out["build_gateway"] != "0", out
    # The image's own zygote forked the container (no fallback to a fresh interpreter).
    agent = cluster.log("agent")
    assert '"zygote_failed"' not in agent and '"zygote_warmup_failed"' not in agent, agent
    forked = [json.loads(ln) for ln in agent.splitlines() if '"container_forked"' in ln]
    assert any(f.get("container_id") == out["container_id"] for f in forked), (out, forked)


@pytest.mark.timeout(600)
def test_gpu_container_in_an_image(cluster: Cluster, tmp_path: Path) -> None:
    # The host's driver files (none on a machine without GPUs) are bound under this dir.
    out, logs = run(cluster, tmp_path, "gpu_main")
    assert out == ["0", True, "/run/burst/nvidia", TOKEN], (out, logs)
    # The GPU set's first use made a spare of the image's python for it, with the set's
    # devices and driver dir: the next container with that set is served by it.
    out, logs = run(cluster, tmp_path, "gpu_main")
    assert out == ["0", True, "/run/burst/nvidia", TOKEN], (out, logs)
    forked = [json.loads(ln) for ln in cluster.log("agent").splitlines()
              if '"container_forked"' in ln]
    assert any(f.get("spare_python") and f.get("gpus") == [0] for f in forked), forked


@pytest.mark.timeout(600)
def test_failing_command_names_the_step(cluster: Cluster, tmp_path: Path) -> None:
    out, logs = run(cluster, tmp_path, "broken_cmd_main")
    assert isinstance(out, dict) and "error" in out, out
    assert "image build failed at run_commands(" in out["message"], out
    assert "'exit 3'" in out["message"] and "exit code 3" in out["message"], out
    # Nothing of the failed step stays cached: a second try runs it again.
    again, logs2 = run(cluster, tmp_path, "broken_cmd_main")
    assert isinstance(again, dict) and "exit code 3" in again["message"], again
    assert "'exit 3' (cached)" not in logs2, logs2


@pytest.mark.timeout(600)
def test_unknown_apt_package_names_the_step(cluster: Cluster, tmp_path: Path) -> None:
    out, _ = run(cluster, tmp_path, "broken_apt_main")
    assert isinstance(out, dict) and "error" in out, out
    assert f"image build failed at apt_install('burst-no-such-package-{TOKEN}')" \
        in out["message"], out
    assert "Unable to locate package" in out["message"], out


@pytest.mark.timeout(600)
def test_deploy_of_a_failing_image_exits_nonzero(cluster: Cluster, tmp_path: Path) -> None:
    app = tmp_path / "deploy_bad.py"
    app.write_text(textwrap.dedent(f'''
        import burst

        app = burst.App("imgfs-bad")
        image = burst.Image.debian_slim().apt_install("burst-no-such-package-d{TOKEN}")


        @app.function(image=image)
        def f():
            return 1
        '''))
    proc = cluster.burst("deploy", str(app), timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert f"apt_install('burst-no-such-package-d{TOKEN}')" in text, text
    assert "Unable to locate package" in text, text


@pytest.mark.timeout(600)
def test_changed_last_step_rebuilds_only_it(cluster: Cluster, tmp_path: Path) -> None:
    first, logs1 = run(cluster, tmp_path, "cached_main", last="one")
    assert first == "last one", (first, logs1)
    assert f"Step 1/2: run_commands('echo first {TOKEN} > /opt/first')\n" in \
        _builds(logs1), logs1
    second, logs2 = run(cluster, tmp_path, "cached_main", last="two")
    assert second == "last two", (second, logs2)
    built = _builds(logs2)
    assert f"Step 1/2: run_commands('echo first {TOKEN} > /opt/first') (cached)" in built, \
        built
    assert "Step 2/2: run_commands('echo last two > /opt/last')\n" in built, built


@pytest.mark.timeout(600)
def test_from_registry_exported_from_the_local_engine(cluster: Cluster, tmp_path: Path) -> None:
    # CI's Docker engine has python:3.11-slim (deploy/base-image.sh tags it); no registry.
    out, logs = run(cluster, tmp_path, "registry_main")
    assert out == TOKEN, (out, logs)


@pytest.mark.timeout(600)
def test_from_registry_tag_the_engine_lacks_is_named(cluster: Cluster, tmp_path: Path) -> None:
    # No registry here: a tag the local engine does not have is an error naming it.
    out, _ = run(cluster, tmp_path, "absent_tag_main")
    assert isinstance(out, dict) and "error" in out, out
    assert f"'burst-no-such-image-{TOKEN}:1' is not on this agent's Docker engine" \
        in out["message"], out


@pytest.mark.timeout(900)
def test_each_python_version(cluster: Cluster, tmp_path: Path) -> None:
    versions = available_versions()
    assert "3.11" in versions, versions
    out, logs = run(cluster, tmp_path, "versions_main", timeout=840)
    assert isinstance(out, dict) and {v: got[0] for v, got in out.items()} == \
        {v: v for v in versions}, (out, logs)
    # apt_install in a 3.13 image gets trixie's packages, not the machine's release's.
    if "3.13" in out and rootfs.host_codename() != "trixie":
        assert "trixie" in out["3.13"][1], out["3.13"][1]
        assert rootfs.host_codename() not in out["3.13"][1], out["3.13"][1]


MOUNTED_APP = '''
import json, os

import burst

app = burst.App("images-mounted")

# An image materialised as a root filesystem, and the default image (the fast path): files
# added at start (copy=False) are bound read-only into each container; copy=True bakes one.
built = (burst.Image.debian_slim().run_commands("echo @TOKEN@ > /opt/built")
         @BAKED@
         .add_local_file(@CFG@, "/etc/burst-test/mounted.txt")
         .add_local_dir(@DIR@, "/srv/local"))
plain = burst.Image.debian_slim().add_local_file(@CFG@, "/srv/plain/settings.txt")


def _read(paths):
    # Each path's content, and how it is mounted: "ro" (a read-only mount of its own), or
    # "image" (no mount of its own: part of the image's filesystem).
    with open("/proc/self/mountinfo") as f:
        opts = {ln.split()[4]: ln.split()[5].split(",")[0] for ln in f}
    out = {}
    for p in paths:
        out[p] = open(p).read()
        out[p + ":mount"] = opts.get(p, "image")
    return out


@app.function(image=built, scaledown_window=2)
def on_rootfs():
    with open("/proc/self/mountinfo") as f:
        srv = next((ln.split()[5].split(",")[0] for ln in f if ln.split()[4] == "/srv/local"),
                   "image")
    paths = ("/opt/conf/settings.txt", "/etc/burst-test/mounted.txt", "/srv/local/a.txt")
    return {"/srv/local:mount": srv, **_read([p for p in paths if os.path.exists(p)]),
            "built": open("/opt/built").read().strip()}


@app.function(image=plain, scaledown_window=2)
def on_default():
    return _read(["/srv/plain/settings.txt"])


@app.local_entrypoint()
def main():
    print("RESULT", json.dumps({"rootfs": on_rootfs.remote(), "default": on_default.remote()}))
'''


@pytest.mark.timeout(600)
def test_files_added_at_start_are_mounted_not_built(cluster: Cluster, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:10]
    cfg, tree = tmp_path / "settings.txt", tmp_path / "tree"
    tree.mkdir()
    app = tmp_path / "mounted_app.py"

    def write(baked: bool) -> None:
        app.write_text(MOUNTED_APP.replace("@TOKEN@", token).replace("@BAKED@", (
            f'.add_local_file({str(cfg)!r}, "/opt/conf/settings.txt", copy=True)'
            if baked else "")).replace("@CFG@", repr(str(cfg))).replace("@DIR@",
                                                                        repr(str(tree))))

    write(baked=True)

    def once(version: str) -> tuple[object, str]:
        cfg.write_text(f"settings {version}")
        (tree / "a.txt").write_text(f"a {version}")
        proc = cluster.burst("run", f"{app}::main", check=True, timeout=500)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert line is not None, proc.stdout + proc.stderr
        return json.loads(line[len("RESULT "):]), proc.stdout + proc.stderr

    first, logs1 = once("one")
    ro = {"/opt/conf/settings.txt:mount": "image", "/etc/burst-test/mounted.txt:mount": "ro",
          "/srv/local/a.txt:mount": "image"}
    assert first == {"rootfs": {"/opt/conf/settings.txt": "settings one",
                                "/etc/burst-test/mounted.txt": "settings one",
                                "/srv/local/a.txt": "a one", "built": token,
                                "/srv/local:mount": "ro", **ro},
                     "default": {"/srv/plain/settings.txt": "settings one",
                                 "/srv/plain/settings.txt:mount": "ro"}}, (first, logs1)
    built1 = _builds(logs1)
    # Only the copied file is a build step with its content; the others, mount points.
    assert "add_local_file(" in built1 and "its mount point" in built1, built1
    second, logs2 = once("two")
    assert isinstance(second, dict), second
    # The mounted files are the new ones; the baked one too, as its step was built again.
    assert second["rootfs"]["/etc/burst-test/mounted.txt"] == "settings two", second
    assert second["rootfs"]["/srv/local/a.txt"] == "a two", second
    assert second["rootfs"]["/opt/conf/settings.txt"] == "settings two", second
    assert second["default"]["/srv/plain/settings.txt"] == "settings two", second
    built2 = _builds(logs2)
    assert f"run_commands('echo {token} > /opt/built') (cached)" in built2, built2
    # The copied file's step was built again (its content changed), and the mount points
    # above it; nothing else.
    rebuilt = [ln for ln in built2.splitlines()
               if ln.startswith("Step ") and ": " in ln and "(cached" not in ln]
    assert rebuilt and all("/opt/conf/settings.txt" in ln or "mount point" in ln
                           for ln in rebuilt), built2
    # Without the copied file, a changed file builds nothing at all.
    write(baked=False)
    once("three")
    fourth, logs4 = once("four")
    assert isinstance(fourth, dict), fourth
    assert fourth["rootfs"]["/etc/burst-test/mounted.txt"] == "settings four", fourth
    assert fourth["rootfs"]["/srv/local/a.txt"] == "a four", fourth
    assert fourth["default"]["/srv/plain/settings.txt"] == "settings four", fourth
    assert "[image build]" not in logs4, logs4


def _builds(logs: str) -> str:
    return "".join(ln.split("[image build] ", 1)[1] + "\n" for ln in logs.splitlines()
                   if "[image build] " in ln)


# ---- the image store itself (no cluster): concurrent builds, failed builds -------------
def _build(args: tuple[str, str]) -> tuple[str, list[str], str]:
    """In a process of its own (an agent): materialise the image; its key, log, root."""
    from burst import wire

    command, store_dir = args
    lines: list[str] = []
    spec = wire.ImageSpec(steps=[wire.ImageStep(kind="run_commands", args=[command])])
    view = rootfs.Store(Path(store_dir)).materialise(spec, lines.append)
    return view.key, lines, str(view.root)


@pytest.mark.timeout(300)
def test_two_agents_build_the_same_image_once() -> None:
    import multiprocessing

    from burst_agent.runtimes.images import cache_dir

    store = cache_dir("rootfs")
    command = f"sleep 2; echo {TOKEN} > /opt/together"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build, [(command, str(store))] * 2)
        check_built_once(store, command, results)


def check_built_once(store: Path, command: str,
                     results: list[tuple[str, list[str], str]]) -> None:
    """(While the two builders still run: their views are mounted.)"""
    (key1, log1, root1), (key2, log2, root2) = results
    assert root1 != root2  # each agent mounts its own view of the same layers
    assert key1 == key2, results
    step = f"Step 1/1: run_commands({command!r})"
    # One built it; the other waited for it and took it from the cache.
    built = [log for log in (log1, log2) if step in log]
    waited = [log for log in (log1, log2) if f"{step} (cached, built by another agent)" in log]
    assert len(built) == 1 and len(waited) == 1, results
    for root in (root1, root2):
        assert (Path(root) / "opt" / "together").read_text().strip() == TOKEN
    assert not [p for p in store.joinpath("layers").iterdir() if ".building-" in p.name]
    # Its mounted view keeps its layer from eviction and prune.
    assert str(store / "layers" / key1) in rootfs.Store(store).used_paths()


@pytest.mark.timeout(300)
def test_a_failed_step_leaves_nothing_cached() -> None:
    from burst_agent.runtimes.images import ImageError, cache_dir

    store = cache_dir("rootfs")
    command = f"echo {TOKEN} > /opt/half; echo failing {TOKEN}; exit 7"
    with pytest.raises(ImageError) as e:
        _build((command, str(store)))
    assert str(e.value).startswith(f"image build failed at run_commands({command!r}): "
                                   f"exit code 7: failing {TOKEN}"), e.value
    names = [p.name for p in store.joinpath("layers").iterdir()]
    assert not [n for n in names if ".building-" in n], names
    labels = [e["label"] for e in rootfs.Store(store).entries()]
    assert not [label for label in labels if "exit 7" in str(label)], labels
