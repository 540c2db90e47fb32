"""What of the host the sandbox's command line binds: only what the interpreter needs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from burst_agent.runtimes import sandbox
from burst_agent.runtimes.sandbox import Sandbox, hide_args


def box(home: Path) -> Sandbox:
    sb = Sandbox(mode="on", agent_id="a1", home=str(home), bwrap="/usr/bin/bwrap",
                 setpriv="/usr/bin/setpriv")
    sb._plan_view()
    return sb


def test_no_host_root_and_no_burst_state(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # The agent runs from $BURST_HOME: it is on its sys.path, and must stay out anyway.
    monkeypatch.setattr(sys, "path", [*sys.path, str(home)])
    sb = box(home)
    argv = sb.command(["python"], bundle_dir=tmp_path, socket_path=tmp_path / "s",
                      private_dir=tmp_path / "p", gpu_indices=[])
    # Host paths shown as themselves (not the agent's own files bound at /etc/passwd).
    binds = [argv[i + 1] for i, a in enumerate(argv)
             if a == "--ro-bind" and argv[i + 1] == argv[i + 2]]
    assert "/" not in binds and "/etc" not in binds and "/home" not in binds, binds
    assert not any(b == str(home) or b.startswith(str(home) + os.sep) for b in binds), binds
    assert "/usr" in binds and os.path.realpath(sys.base_prefix) in binds + sb.binds
    # The container's users are its own, not the host's.
    i = argv.index("/etc/passwd")
    assert argv[i - 1] == str(sb.etc_dir / "passwd")
    assert "nobody:x:65534" in (sb.etc_dir / "passwd").read_text()


def test_bwrap_options_go_through_a_memfd(tmp_path: Path) -> None:
    argv = ["unshare", "--net", "--", "/usr/bin/bwrap", "--ro-bind", str(tmp_path), "/x",
            "--", "/bin/true", "arg"]
    short, fd = hide_args(argv)
    try:
        assert short == ["unshare", "--net", "--", "/usr/bin/bwrap", "--args", str(fd), "--",
                         "/bin/true", "arg"]
        assert os.read(fd, 4096) == f"--ro-bind\0{tmp_path}\0/x\0".encode()
    finally:
        os.close(fd)
    assert sandbox.CPU_SYSFS.startswith("/sys/")


def test_image_container_with_gpus_gets_the_host_driver(tmp_path: Path) -> None:
    """An image's root filesystem lacks the host's NVIDIA driver: with GPUs assigned, its
    libraries (link names bound to their files) and tools are bound in read-only."""
    libs, bins = tmp_path / "lib", tmp_path / "bin"
    libs.mkdir()
    bins.mkdir()
    (libs / "libcuda.so.550.54").write_text("driver")
    (libs / "libcuda.so.1").symlink_to("libcuda.so.550.54")
    (libs / "libnvidia-ml.so.1").write_text("nvml")
    (libs / "libssl.so.3").write_text("not the driver")
    (bins / "nvidia-smi").write_text("#!/bin/sh\n")
    files = sandbox.gpu_driver_files((str(libs),), (str(bins),))
    assert sorted(files) == sorted([
        (str(libs / "libcuda.so.550.54"), "libcuda.so.1"),
        (str(libs / "libcuda.so.550.54"), "libcuda.so.550.54"),
        (str(libs / "libnvidia-ml.so.1"), "libnvidia-ml.so.1"),
        (str(bins / "nvidia-smi"), "bin/nvidia-smi")])
    sb = box(tmp_path / "home")
    root, shim = tmp_path / "view", tmp_path / "shim"
    with_gpu = sb.command(["python"], bundle_dir=tmp_path, socket_path=tmp_path / "s",
                          private_dir=tmp_path / "p", gpu_indices=[0], rootfs=(root, shim))
    without = sb.command(["python"], bundle_dir=tmp_path, socket_path=tmp_path / "s",
                         private_dir=tmp_path / "p", gpu_indices=[], rootfs=(root, shim))
    i = with_gpu.index(sandbox.GPU_DRIVER_DIR)
    assert with_gpu[i - 1] == "--tmpfs", with_gpu
    assert sandbox.GPU_DRIVER_DIR not in without
    # The image is the root, read-only; none of the host's system dirs is bound.
    assert without[without.index(str(root)) - 1: without.index(str(root)) + 2] == [
        "--ro-bind", str(root), "/"]
    assert "/usr" not in without
