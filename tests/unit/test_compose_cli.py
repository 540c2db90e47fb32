"""`burst compose ARGS`: `docker compose -f deploy/compose/compose.yaml ARGS`, with the
engine's socket taken from a unix:// DOCKER_HOST (the e2e tests run it against a real
engine: tests/e2e/test_compose.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from burst.cli.compose import compose_env
from burst.exception import InvalidError

BURST = str(Path(sys.executable).parent / "burst")
REPO = Path(__file__).resolve().parents[2]


def test_socket_from_a_unix_docker_host() -> None:
    env = compose_env({"DOCKER_HOST": "unix:///tmp/dk/docker.sock", "X": "1"})
    assert env["BURST_DOCKER_SOCKET"] == "/tmp/dk/docker.sock" and env["X"] == "1"
    # Unset: compose.yaml's default (/var/run/docker.sock), nothing added.
    assert "BURST_DOCKER_SOCKET" not in compose_env({})


@pytest.mark.parametrize("host", ["tcp://10.0.0.5:2375", "ssh://me@box", "unix://docker.sock"])
def test_any_other_docker_host_is_refused_naming_it(host: str) -> None:
    with pytest.raises(InvalidError, match=f"DOCKER_HOST='{host}' is not a local engine"):
        compose_env({"DOCKER_HOST": host})


def test_burst_compose_runs_docker_compose_on_the_file(tmp_path: Path) -> None:
    # A `docker` that prints what it was run with stands in for the CLI here.
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "$BURST_DOCKER_SOCKET"\nfor a; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "DOCKER_HOST": "unix:///run/x/docker.sock"}
    out = subprocess.run([BURST, "compose", "--profile", "ha", "up", "-d", "--help"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "/run/x/docker.sock", "compose", "-f", str(REPO / "deploy/compose/compose.yaml"),
        "--profile", "ha", "up", "-d", "--help"]
    bad = subprocess.run([BURST, "compose", "ps"], env={**env, "DOCKER_HOST": "tcp://h:2375"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "DOCKER_HOST='tcp://h:2375' is not a local engine socket" in bad.stderr
