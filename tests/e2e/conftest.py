"""A whole local cluster from `burst up`, with test-sized timers, shared by a module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BURST = str(Path(sys.executable).parent / "burst")
REPO = Path(__file__).resolve().parents[2]

FAST_TIMERS = {
    "BURST_HEARTBEAT_INTERVAL": "0.2",
    "BURST_SERVICE_HEARTBEAT_INTERVAL": "0.5",
    "BURST_METERING_INTERVAL": "1",
    "BURST_SCALEDOWN_TICK": "0.1",
    "BURST_RECONCILE_INTERVAL": "0.5",
    "BURST_STOP_GRACE": "1",
    "BURST_SNAPSHOT_INTERVAL": "0.5",
    "BURST_CONTAINER_HEARTBEAT_INTERVAL": "0.5",
    "BURST_CONTAINER_HEARTBEAT_TIMEOUT": "3",
    # Small enough that a test can cross it cheaply.
    "BURST_MAX_BODY_BYTES": str(8 << 20),
}


@dataclass
class Cluster:
    home: Path
    env: dict[str, str]

    def burst(self, *args: str, cwd: Path | None = None, timeout: float = 120,
              check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([BURST, *args], env=self.env, cwd=cwd or REPO, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"burst {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def profile(self) -> dict[str, str]:
        return json.loads((self.home / "profile.json").read_text())

    def log(self, name: str) -> str:
        p = self.home / "logs" / f"{name}.log"
        return p.read_text() if p.exists() else ""


def running_cluster(tmp_path_factory: pytest.TempPathFactory, *up_args: str,
                    **extra_env: str) -> Iterator[Cluster]:
    """`burst up` with FAST_TIMERS (plus ``extra_env``, and ``up_args`` such as
    ``--gpus H100:1``) in a fresh home; `burst down` after.

    Modules that need other settings make their own module-scoped fixture from this."""
    home = tmp_path_factory.mktemp("burst-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update({**FAST_TIMERS, **extra_env}, BURST_HOME=str(home), HOME=str(home))
    c = Cluster(home, env)
    # Within the test's own timeout (pytest-timeout, 120 s), so that a cluster that does
    # not get healthy is stopped by `burst up` itself (naming the part that failed)
    # instead of being left running when pytest-timeout ends the test.
    up = c.burst("up", "--timeout", "90", *up_args, timeout=110)
    if up.returncode != 0:
        c.burst("down")
        raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
    yield c
    down = c.burst("down", timeout=60)
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory)
