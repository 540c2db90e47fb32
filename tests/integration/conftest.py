"""Fixtures shared by integration modules (the servers themselves are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scheduler_procs import SchedulerProcs, scheduler_env


@pytest.fixture
def scheduler_procs(nats_url: str, redis_url: str, tmp_path: Path) -> Iterator[SchedulerProcs]:
    """Scheduler replicas as processes against this test's servers (logs in tmp_path);
    ``start(instance, BURST_X=...)`` adds settings to the shared test-sized ones."""
    procs = SchedulerProcs(scheduler_env(
        nats_url, redis_url, tmp_path, BURST_HEARTBEAT_TIMEOUT="30",
        BURST_RECONCILE_INTERVAL="0.5", BURST_SERVICE_HEARTBEAT_INTERVAL="0.5"), tmp_path)
    yield procs
    procs.stop_all()
