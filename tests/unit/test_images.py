"""burst.Image: steps, content hashes, what each runtime makes of them (no Docker engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import burst
from burst import wire
from burst.exception import InvalidError
from burst_agent.runtimes import images, rootfs
from burst_agent.runtimes.base import ContainerSpec


def test_steps_in_order_and_hash_follows_content(tmp_path: Path) -> None:
    (tmp_path / "conf.txt").write_text("a")
    a = burst.Image.debian_slim().pip_install("six==1.16.0").env({"A": "1"})
    b = burst.Image.debian_slim().pip_install("six==1.16.0").env({"A": "1"})
    assert a.content_hash == b.content_hash
    assert [s.kind for s in a.spec.steps] == ["pip_install", "env"]
    assert a.env({"A": "2"}).content_hash != a.content_hash
    assert a.content_hash != burst.Image.debian_slim().content_hash  # immutable: a new image
    f1 = a.add_local_file(tmp_path / "conf.txt", "/etc/conf.txt", copy=True)
    m1 = a.add_local_file(tmp_path / "conf.txt", "/etc/conf.txt")
    (tmp_path / "conf.txt").write_text("b")
    f2 = a.add_local_file(tmp_path / "conf.txt", "/etc/conf.txt", copy=True)
    m2 = a.add_local_file(tmp_path / "conf.txt", "/etc/conf.txt")
    assert f1.content_hash != f2.content_hash  # a copied file's content, not its name
    assert m1.content_hash == m2.content_hash  # one mounted at start: not built


def _f() -> None: ...


def _g() -> None: ...


def test_spec_travels_in_the_function_spec() -> None:
    img = burst.Image.debian_slim().apt_install("curl")
    app = burst.App("imgs", image=img)
    f = app.function(name="f")(_f)
    g = app.function(name="g", image=burst.Image.from_registry("python:3.11-slim"))(_g)
    spec = msgspec.msgpack.decode(msgspec.msgpack.encode(f.spec), type=wire.FunctionSpec)
    assert spec.image is not None and spec.image.content_hash == img.content_hash
    assert g.spec.image is not None and g.spec.image.registry_tag == "python:3.11-slim"
    # An old payload without the field still decodes.
    old = msgspec.msgpack.encode({"name": "f", "module": "m", "qualname": "f"})
    assert msgspec.msgpack.decode(old, type=wire.FunctionSpec).image is None


@pytest.mark.parametrize("bad", [
    lambda: burst.Image.debian_slim(python_version="2.7"),
    lambda: burst.Image.from_registry("has space"),
    lambda: burst.Image.debian_slim().pip_install(3),  # type: ignore[arg-type]
    lambda: burst.Image.debian_slim().env({"A=B": "x"}),
    lambda: burst.Image.debian_slim().workdir("relative"),
    lambda: burst.Image.debian_slim().add_local_file("/no/such/file", "/x"),
    lambda: burst.Image.debian_slim().add_local_python_source("no_such_module_xyz"),
    lambda: burst.App("x", image="python:3.11"),  # type: ignore[arg-type]
])
def test_bad_values_named(bad: Any) -> None:
    with pytest.raises(InvalidError):
        bad()


def test_add_local_python_source_carries_the_package() -> None:
    img = burst.Image.debian_slim().add_local_python_source("burst_core")
    step = img.spec.steps[0]
    assert step.path == "/opt/burst/python/burst_core"
    assert "names.py" in step.files and not any(k.endswith(".pyc") for k in step.files)


def test_import_burst_stays_light() -> None:
    code = "import sys, burst; burst.Image.debian_slim(); print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_process_runtime_fast_path_or_root_filesystem() -> None:
    """The default image (pip_install/env/add_local_python_source on 3.11) keeps the agent's
    interpreter; any other step, Python or base needs a root filesystem of its own."""
    fast = burst.Image.debian_slim().env({"A": "1"}).pip_install("six") \
        .add_local_python_source("burst_core")
    assert not rootfs.needs_rootfs(None) and not rootfs.needs_rootfs(fast.spec)
    for img in [burst.Image.debian_slim().apt_install("curl"),
                burst.Image.debian_slim().run_commands("make"),
                burst.Image.from_registry("ubuntu:24.04"),
                burst.Image.debian_slim(python_version="3.13"),
                burst.Image.debian_slim().workdir("/srv"),
                burst.Image.debian_slim().add_local_file(__file__, "/x.py", copy=True)]:
        assert rootfs.needs_rootfs(img.spec), img
    # Files added at start are bound in as the container starts, on the fast path too.
    assert not rootfs.needs_rootfs(burst.Image.debian_slim().add_local_file(__file__, "/x.py")
                                   .spec)
    env = burst.Image.debian_slim().env({"A": "1"}).env({"B": "2"}).spec
    assert images.process_env(env) == {"A": "1", "B": "2"}


def test_dockerfile_from_steps(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    img = (burst.Image.debian_slim().pip_install("six==1.16.0").apt_install("curl")
           .run_commands("echo a", "echo b").env({"A": "one two"}).workdir("/work")
           .add_local_dir(tmp_path / "d", "/data", copy=True))
    df = images.dockerfile(img.spec, ["burst-0.1.0-py3-none-any.whl"])
    lines = df.text.splitlines()
    assert lines[0] == "FROM burst-base:py311"
    assert 'RUN ["/bin/sh", "-c", "python3 -m pip install --no-cache-dir six==1.16.0"]' in lines
    assert 'RUN ["/bin/sh", "-c", "echo b"]' in lines
    assert 'ENV A="one two"' in lines and 'WORKDIR "/work"' in lines
    assert df.files == {"files/5/x.txt": b"x"} and df.workdir == "/work"
    # Every instruction maps back to the user's step, for build errors.
    n = lines.index('RUN ["/bin/sh", "-c", "echo b"]') + 1
    assert df.labels[n] == "run_commands('echo a', 'echo b'): 'echo b'"
    shim = next(i for i, ln in enumerate(lines, 1) if "--no-index" in ln)
    assert df.labels[shim].startswith("Burst's shim layer")
    assert images.dockerfile(burst.Image.from_registry("ubuntu:24.04").spec, []).text \
        .startswith("FROM ubuntu:24.04\n")


class FakeClient:
    pass


def spec(tmp_path: Path, gpus: list[int]) -> ContainerSpec:
    return ContainerSpec(container_id="c1", bundle_dir=tmp_path, socket_path=tmp_path / "s.sock",
                         module="m", qualname="f", cpu=0.5, memory_mb=256, gpu_indices=gpus)


def test_docker_run_options_harden_and_limit(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    from burst_agent.runtimes.docker import DockerRuntime

    rt = DockerRuntime(tmp_path, uid=65534, client=FakeClient())
    opts = rt.run_options(spec(tmp_path, []), {}, "")
    assert opts["network_mode"] == "none"
    assert opts["cap_drop"] == ["ALL"] and opts["security_opt"] == ["no-new-privileges"]
    assert opts["user"] == "65534:65534"
    assert opts["mem_limit"] == "256m" and opts["memswap_limit"] == "256m"
    assert opts["pids_limit"] == 4096 and opts["nano_cpus"] > 0  # the setting's default
    assert "device_requests" not in opts  # no GPU, no device request
    env = opts["environment"]
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == "void"
    mounts = {m["Target"]: m for m in opts["mounts"]}
    assert mounts["/burst/bundle"]["ReadOnly"] is True
    assert mounts["/run/burst/shim.sock"]["Source"] == str(tmp_path / "s.sock")


def test_pids_limit_is_the_setting_on_both_runtimes(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    from burst_agent.runtimes.docker import DockerRuntime
    from burst_agent.runtimes.sandbox import Sandbox

    rt = DockerRuntime(tmp_path, client=FakeClient(), pids_limit=64)
    assert rt.run_options(spec(tmp_path, []), {}, "")["pids_limit"] == 64
    assert Sandbox.detect("off", "a1", str(tmp_path), pids_limit=64).pids_limit == 64
    # A limit the shim could not live with (or none) is refused, naming the value.
    for bad in (0, -1, 15):
        with pytest.raises(ValueError, match=rf"BURST_CONTAINER_PIDS_LIMIT={bad} is not "
                           "valid: use a whole number .* of at least 16"):
            DockerRuntime(tmp_path, client=FakeClient(), pids_limit=bad)
        with pytest.raises(ValueError, match=rf"BURST_CONTAINER_PIDS_LIMIT={bad} "):
            Sandbox.detect("off", "a1", str(tmp_path), pids_limit=bad)


def test_docker_gpus_by_device_request(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    from burst_agent.runtimes.docker import DockerRuntime

    real = DockerRuntime(tmp_path, client=FakeClient(), gpu_devices=True)
    opts = real.run_options(spec(tmp_path, [2, 3]), {}, "")
    (req,) = opts["device_requests"]
    assert req["DeviceIDs"] == ["2", "3"] and req["Capabilities"] == [["gpu"]]
    # Only the assigned GPUs are in the container, numbered from 0 there.
    assert opts["environment"]["NVIDIA_VISIBLE_DEVICES"] == "2,3"
    assert opts["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    declared = DockerRuntime(tmp_path, client=FakeClient(), gpu_devices=False)
    opts = declared.run_options(spec(tmp_path, [2, 3]), {}, "")
    assert "device_requests" not in opts
    assert opts["environment"]["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_local_steps_need_no_files_inside_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shim imports the app's module again in the container: its image must not fail.
    monkeypatch.setenv("BURST_SHIM_SOCKET", "/run/burst/shim.sock")
    img = (burst.Image.debian_slim().add_local_python_source("not_here_xyz")
           .add_local_file("/not/here", "/x").add_local_dir("/not/here", "/y"))
    assert [s.files for s in img.spec.steps] == [{}, {}, {}]
