"""What every service process shares: connecting, liveness records, signal handling.

A service's ``__main__`` reads settings, configures logging and calls :func:`run_service`
with its ``run(settings, stop)`` coroutine; ``stop`` is set on SIGTERM/SIGINT and the
service shuts down gracefully within its own grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from burst_core import bus, logs, names
from burst_core.schemas import ServiceHeartbeat, ServiceHeartbeatDecoder, encode

log = logs.get("burst.service")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for each to end; what they raise on the way is dropped."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        while not t.done():
            # Python 3.11's asyncio.wait_for loses a cancel that arrives as its inner call
            # finishes (a heartbeat's put, when a service stops just after it started):
            # the task runs on, so it is cancelled again.
            await asyncio.wait({t}, timeout=1.0)
            if not t.done():
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


def _process_figures() -> dict[str, str]:
    """This process's CPU seconds and resident memory (``/metrics`` shows them)."""
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return {}
    return {"cpu_seconds": f"{usage.ru_utime + usage.ru_stime:.3f}", "rss_bytes": str(rss)}


async def heartbeat_loop(
    js: JetStreamContext,
    service: str,
    instance: str,
    interval: float,
    info: Callable[[], dict[str, str]] | None = None,
    health_file: str = "",
) -> None:
    """Write this replica's liveness record to KV every ``interval`` seconds; after each
    one written, touch ``health_file`` when set (``BURST_HEALTH_FILE``: a container's
    health check reads its age, so "healthy" means "its liveness reaches NATS")."""
    kv = await js.key_value(names.KV_SERVICES)
    started = time.time()
    key = names.service_key(service, instance)
    try:
        while True:
            hb = ServiceHeartbeat(
                service=service, instance=instance, at=time.time(), started_at=started,
                info={**(info() if info else {}), **_process_figures()},
            )
            try:
                await asyncio.wait_for(kv.put(key, encode(hb)), max(interval, 1.0))
            except Exception as e:  # NATS blip: the next beat will make up for it
                log.warning("service_heartbeat_failed", error=repr(e))
            else:
                if health_file:
                    _touch(health_file)
            await asyncio.sleep(interval)
    finally:
        # Best effort, bounded: a shutdown must never wait on a slow or gone server.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(kv.delete(key), 1.0)


def _touch(path: str) -> None:
    try:
        Path(path).touch()
    except OSError as e:
        log.warning("health_file_not_written", path=path, error=str(e))


async def live_services(js: JetStreamContext, timeout: float) -> list[ServiceHeartbeat]:
    """The liveness records written in the last ``timeout`` seconds, by service and instance.

    A replica that stops deletes its own record; one killed (SIGKILL, a lost machine) cannot,
    and a restarted one writes under a new instance id: such a record is left out once it
    is ``timeout`` old, and deleted, unless its replica has written again meanwhile (the
    delete names the revision that was read).
    """
    kv = await js.key_value(names.KV_SERVICES)
    now = time.time()
    live: list[ServiceHeartbeat] = []
    for key in await bus.kv_keys(kv):
        raw, revision = await bus.kv_get(kv, key)
        if raw is None:
            continue
        hb = ServiceHeartbeatDecoder.decode(raw)
        if now - hb.at <= timeout:
            live.append(hb)
            continue
        with contextlib.suppress(Exception):  # written again meanwhile, or a NATS blip
            await kv.delete(key, last=revision)
    live.sort(key=lambda hb: (hb.service, hb.instance))
    return live


_uvloop: Any
try:  # libuv's event loop where installed (the server extra): far less CPU per message
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - plain asyncio works the same, slower
    _uvloop = None


def run_service(main: Callable[[asyncio.Event], Awaitable[Any]]) -> None:
    """Run ``main(stop)`` on a fresh loop; SIGTERM/SIGINT set ``stop``."""

    async def _runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if _uvloop is not None:
        _uvloop.run(_runner())
    else:
        asyncio.run(_runner())
