"""The sandbox's pids limit where the machine cannot apply it: said, not silently skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from burst_agent.runtimes import sandbox
from burst_agent.runtimes.sandbox import Cgroup, Sandbox


def test_without_the_sandbox_the_log_says_pids_are_unlimited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_logs() as logs:
        Sandbox.detect("off", "a1", str(tmp_path), pids_limit=64)
    (off,) = [e for e in logs if e["event"] == "sandbox_off"]
    assert off["log_level"] == "warning" and "pids limit" in off["detail"], off
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)  # no bubblewrap
    with capture_logs() as logs:
        box = Sandbox.detect("auto", "a1", str(tmp_path), pids_limit=64)
    assert not box.enabled
    (missing,) = [e for e in logs if e["event"] == "sandbox_unavailable"]
    assert "pids limit" in missing["detail"], missing


def fake_cgroups(root: Path, controllers: list[str]) -> None:
    """cgroup v1 mounts under ``root`` with this process's own cgroup dirs in them."""
    for ctrl in controllers:
        (root / ctrl).mkdir()
        (root / ctrl / "cgroup.procs").write_text("")
        (root / ctrl / sandbox._own_cgroup(ctrl).lstrip("/")).mkdir(parents=True,
                                                                    exist_ok=True)


def test_pids_cgroup_made_where_the_controller_is(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "CGROUP_ROOT", tmp_path)
    fake_cgroups(tmp_path, ["memory", "cpu", "pids"])
    parents = Cgroup.parent_dirs("a1")
    assert parents is not None and sorted(parents) == ["cpu", "memory", "pids"]
    cg = Cgroup.create(parents, "c1", cpu=0.5, cpu_limit=1.0, memory_limit_mb=64,
                       pids_limit=100)
    assert (cg.dirs["pids"] / "pids.max").read_text() == "100" and cg.pids_limit == 100
    assert str(cg.dirs["pids"] / "tasks") in cg.tasks_files()  # joined with the others


def test_no_pids_controller_leaves_cpu_and_memory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "CGROUP_ROOT", tmp_path)
    fake_cgroups(tmp_path, ["memory", "cpu"])
    parents = Cgroup.parent_dirs("a1")
    assert parents is not None and sorted(parents) == ["cpu", "memory"]
    cg = Cgroup.create(parents, "c1", cpu=0.5, cpu_limit=1.0, memory_limit_mb=64)
    assert cg.pids_limit is None and len(cg.tasks_files()) == 2
    if shutil.which("bwrap") is None or os.geteuid() != 0:
        pytest.skip("the sandbox itself needs bubblewrap and root")
    with capture_logs() as logs:
        box = Sandbox.detect("on", "a1", str(tmp_path / "home"), pids_limit=64)
    assert box.cgroup_parents is not None and "pids" not in box.cgroup_parents
    (warning,) = [e for e in logs if e["event"] == "pids_cgroup_unavailable"]
    assert "unlimited" in warning["detail"] and "=64" in warning["detail"], warning
    (ready,) = [e for e in logs if e["event"] == "sandbox_ready"]
    assert ready["pids_limit"] is None


def test_containers_import_burst_as_the_agent_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent run from a source tree (PYTHONPATH, no install: the lent GPU machine) gives
    its containers the same import path; without it their shim could not import burst
    ("container exited with code 1 before it was ready"). A function's own env wins."""
    from burst_agent.runtimes.base import ContainerSpec
    from burst_agent.runtimes.process import ProcessRuntime

    spec = ContainerSpec("ct-1", tmp_path, tmp_path / "s.sock", "app", "f")
    rt = ProcessRuntime(sandbox=None)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert "PYTHONPATH" not in rt._env(spec, "/h", "/b", "/s")
    monkeypatch.setenv("PYTHONPATH", "/src/libs:/site")
    assert rt._env(spec, "/h", "/b", "/s")["PYTHONPATH"] == "/src/libs:/site"
    spec.env = {"PYTHONPATH": "/mine"}
    assert rt._env(spec, "/h", "/b", "/s")["PYTHONPATH"] == "/mine"
