"""Scheduler replicas as processes of their own (``python -m burst_scheduler``), for tests
that kill one (SIGKILL: it releases nothing) and watch another take over; and who holds
the ``scheduler`` lease.

Used by the integration tests (replicas against a test nats-server and redis-server) and
the end-to-end ones (a second replica next to the one `burst up` started).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from burst_core import bus, names
from burst_core.schemas import LeaseRecordDecoder


def scheduler_env(nats_url: str, redis_url: str, home: Path | str,
                  base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment without ``BURST_*``) pointed at
    ``nats_url`` and ``redis_url``, plus ``extra`` settings."""
    if base is None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    return {**base, "BURST_NATS_URL": nats_url, "BURST_REDIS_URL": redis_url,
            "BURST_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


class SchedulerProcs:
    """Starts scheduler replicas with ``env`` (each its own ``BURST_INSTANCE``), their
    output in ``<log_dir>/<instance>.log``; :meth:`stop_all` ends whatever is left."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, instance: str, **env: str) -> subprocess.Popen[bytes]:
        """Start replica ``instance`` with ``env`` on top of the shared environment."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(instance), "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "burst_scheduler"],
                                    env={**self.env, **env, "BURST_INSTANCE": instance},
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs[instance] = proc
        return proc

    def __getitem__(self, instance: str) -> subprocess.Popen[bytes]:
        return self.procs[instance]

    def log_path(self, instance: str) -> Path:
        return self.log_dir / f"{instance}.log"

    def log(self, instance: str) -> str:
        p = self.log_path(instance)
        return p.read_text(errors="replace") if p.exists() else ""

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every replica still running; SIGKILL those not gone after ``grace``."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def lease_holder(js: Any) -> str | None:
    """The instance holding the scheduler lease now (None: free or expired)."""
    raw, _ = await bus.kv_get(await js.key_value(names.KV_LEASES), names.LEASE_SCHEDULER)
    if raw is None:
        return None
    rec = LeaseRecordDecoder.decode(raw)
    return rec.holder if rec.expires_at > time.time() else None


def lease_holder_at(nats_url: str) -> str | None:
    """:func:`lease_holder` for code without an event loop (one short connection)."""
    async def read() -> str | None:
        nc = await bus.connect(nats_url, "test-lease-reader")
        try:
            return await lease_holder(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(read())
