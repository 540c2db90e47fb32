"""An app's logs over the kept window: its containers' output and platform events
(container started, ready with its cold start, stopped with the reason, out of memory, a
call's timeout, preemption, image build output), by function, call or container, with a
search, and followed live as server-sent events.

Lines live in the stream BURST_LOGS (``BURST_LOG_RETENTION``, ``BURST_LOG_MAX_BYTES``) under
``burst.logs.<workspace>.<app>.<function>.<container>.<call>``: the server filters a read
by subject, and each read is an ephemeral in-memory consumer. Work is bounded: a window
holding more than ``BURST_LOG_SCAN_MAX`` lines is refused before a line is read, naming
the count, and at most ``limit`` lines (the newest) are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from burst._since import HELP as SINCE_HELP
from burst._since import parse_since
from burst.exception import InvalidError, NotFoundError
from burst.wire import is_app_id
from burst_core import names
from burst_core.schemas import LogLine, LogLineDecoder
from burst_gateway.auth import Principal, principal
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Lines fetched from the server at once.
_BATCH = 1000
#: Seconds the server keeps a read's consumer once nobody fetches from it.
_IDLE = 30.0


def check_id(kind: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidError(f"invalid {kind} id {value!r}: expected letters, digits, '-' and "
                           "'_' (up to 64), as `burst container list` or a call's "
                           "object_id shows it")
    return value


def entry(ln: LogLine) -> dict[str, Any]:
    """One line as the API answers it."""
    return {"at": ln.at, "app": ln.app, "function": ln.function,
            "container_id": ln.container_id, "call_id": ln.call_id, "attempt": ln.attempt,
            "stream": ln.stream, "event": ln.event, "line": ln.line}


@dataclass
class LogQuery:
    workspace: str
    app: str = "*"
    function: str = "*"
    call_id: str = "*"
    container_id: str = "*"
    since: float = 0.0
    search: str = ""

    @property
    def subject(self) -> str:
        return names.logs_filter(self.workspace, self.app, self.function, self.container_id,
                                 self.call_id)

    def matches(self, ln: LogLine) -> bool:
        return not self.search or self.search in ln.line.casefold()


class LogWindow:
    """The lines of one subject filter from a moment on, read through an ephemeral
    consumer in the server's memory (deleted when closed, or by the server once idle)."""

    def __init__(self, gw: Gateway, subject: str, since: float) -> None:
        self.gw, self.subject, self.since = gw, subject, since
        self.name = "logs_" + secrets.token_hex(8)
        self.pending = 0
        self._psub: Any = None

    async def open(self) -> int:
        """Create the consumer; the number of lines in the window so far."""
        start = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
        cfg = ConsumerConfig(name=self.name, filter_subject=self.subject,
                             deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start,
                             ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1,
                             inactive_threshold=_IDLE)
        info = await self.gw.js.add_consumer(names.STREAM_LOGS, cfg)
        self.pending = int(info.num_pending or 0)
        self._psub = await self.gw.js.pull_subscribe_bind(self.name, names.STREAM_LOGS)
        return self.pending

    async def fetch(self, timeout: float) -> list[LogLine]:
        try:
            msgs = await self._psub.fetch(_BATCH, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        out = []
        for m in msgs:
            with contextlib.suppress(Exception):
                out.append(LogLineDecoder.decode(m.data))
        return out

    async def close(self) -> None:
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gw.js.delete_consumer(names.STREAM_LOGS, self.name),
                                   2.0)


async def history(gw: Gateway, q: LogQuery, window: LogWindow, limit: int,
                  ) -> tuple[list[LogLine], int]:
    """The newest ``limit`` matching lines of the window as it was when opened, and how
    many lines were scanned; refuses a window above ``log_scan_max`` before reading."""
    scan_max = gw.settings.log_scan_max
    if window.pending > scan_max:
        since = datetime.datetime.fromtimestamp(q.since, datetime.UTC).isoformat(
            timespec="seconds")
        raise InvalidError(
            f"the window since {since} holds {window.pending} log lines, more than the "
            f"{scan_max} one read may scan (BURST_LOG_SCAN_MAX): narrow --since, or filter "
            "by --function, --call or --container")
    kept: deque[LogLine] = deque(maxlen=limit)
    scanned = 0
    while scanned < window.pending:
        lines = await window.fetch(2.0)
        if not lines:
            break  # lines older than the window expired meanwhile
        for ln in lines:
            scanned += 1
            if q.matches(ln):
                kept.append(ln)
    return list(kept), scanned


async def resolve(gw: Gateway, workspace: str, app: str | None, function: str | None,
                  call_id: str | None, container_id: str | None, since: str | None,
                  search: str | None, default_since: float) -> LogQuery:
    """The query the parameters name, each checked (400 naming a bad one)."""
    q = LogQuery(workspace=workspace)
    now = time.time()
    try:
        q.since = parse_since(since, now) if since else now - default_since
    except ValueError as e:
        raise InvalidError(str(e)) from None
    if search is not None:
        if not search.strip() or len(search) > 1000:
            raise InvalidError(f"invalid --search {search[:40]!r}: give 1 to 1000 characters")
        q.search = search.casefold()
    if function is not None:
        if app is None:
            raise InvalidError("--function needs an app")
        q.function = _ident("function", function)
    if call_id is not None:
        q.call_id = check_id("call", call_id)
    if container_id is not None:
        q.container_id = check_id("container", container_id)
    if app is not None:
        _ident("app", app)
        dep = await gw.deployment(workspace, app)
        if dep is None and not is_app_id(app):
            runs = [d for d in gw.deployments_of(workspace) if d.name == app]
            dep = max(runs, key=lambda d: d.created_at) if runs else None
        q.app = dep.app if dep is not None else app
    return q


def _ident(kind: str, value: str) -> str:
    try:
        names.check_ident(kind, value)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    return value


async def _unknown(gw: Gateway, q: LogQuery) -> str:
    """Why a read that found no line may name something that does not exist, or ""."""
    ws = q.workspace
    if q.app != "*" and await gw.deployment(ws, q.app) is None:
        return (f"app {q.app!r} is not deployed in workspace {ws!r} and has no logs in the "
                "window (see `burst app list`; a finished `burst run` keeps its lines under "
                "its run id, ap-...)")
    if q.call_id != "*" and await gw.caller.record(q.call_id, ws) is None:
        return f"call {q.call_id!r} not found in workspace {ws!r}"
    if q.container_id != "*":
        from burst_gateway.api_containers import find_container

        if await find_container(gw, q.container_id, ws) is None:
            return (f"container {q.container_id!r} is not running in workspace {ws!r} and "
                    "has no logs in the window (see `burst container list`)")
    return ""


async def logs_response(gw: Gateway, q: LogQuery, request: Request, limit: int,
                        follow: bool) -> Any:
    """The answer to a read: JSON, or server-sent events when following."""
    window = LogWindow(gw, q.subject, q.since)
    try:
        await window.open()
        lines, scanned = await history(gw, q, window, limit)
        if not lines and not follow:
            why = await _unknown(gw, q)
            if why:
                raise NotFoundError(why)
    except BaseException:
        await window.close()
        raise
    if not follow:
        await window.close()
        return {"lines": [entry(ln) for ln in lines], "scanned": scanned,
                "since": q.since}
    return StreamingResponse(_follow(gw, q, request, window, lines),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _follow(gw: Gateway, q: LogQuery, request: Request, window: LogWindow,
                  first: list[LogLine]) -> AsyncIterator[bytes]:
    """The window's lines, then new ones as they come, until the client leaves."""
    try:
        for ln in first:
            yield sse("log", entry(ln))
        yield sse("live", {"since": q.since})
        quiet = 0.0
        keepalive = gw.settings.log_keepalive
        while True:
            lines = await window.fetch(min(1.0, keepalive))
            sent = False
            for ln in lines:
                if q.matches(ln):
                    sent = True
                    yield sse("log", entry(ln))
            if sent:
                quiet = 0.0
                continue
            quiet += min(1.0, keepalive)
            if quiet >= keepalive:
                quiet = 0.0
                if await request.is_disconnected():
                    return
                yield b": keepalive\n\n"
    finally:
        await window.close()


@router.get("/v1/logs", tags=["logs"])
async def read_logs(
    request: Request, gw: GatewayDep,
    app: str | None = Query(None, description="An app's name (its deployment, else its "
                            "latest run) or a run's id."),
    function: str | None = Query(None, description="Only this function's lines."),
    call: str | None = Query(None, description="Only this call's lines (a call id)."),
    container: str | None = Query(None, description="Only this container's lines."),
    since: str | None = Query(None, description=f"From when: {SINCE_HELP}; default 1h."),
    search: str | None = Query(None, description="Only lines containing this text "
                               "(case-insensitive)."),
    limit: int = Query(1000, ge=1, description="At most this many lines, the newest."),
    follow: bool = Query(False, description="Then stream new lines as server-sent events "
                         "(`event: log`, data: one line as JSON)."),
    p: Principal = Depends(principal),
) -> Any:
    """A workspace's log lines and platform events over the kept window (their newest
    ``limit``): all its apps', or filtered by app, function, call or container, and
    searched; with
    ``follow``, server-sent events: the window's lines, an ``event: live``, then new lines
    as they come. A window holding more than ``BURST_LOG_SCAN_MAX`` lines is refused
    (400) naming the count."""
    if limit > gw.settings.log_lines_max:
        raise InvalidError(f"limit={limit} is above the {gw.settings.log_lines_max} lines one "
                           "read returns (BURST_LOG_LINES_MAX)")
    q = await resolve(gw, p.workspace, app, function, call, container, since, search,
                      gw.settings.log_default_since)
    return await logs_response(gw, q, request, limit, follow)
