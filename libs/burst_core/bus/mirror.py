"""A typed, current copy of one KV bucket: :class:`KVMirror`.

Invariants: ``items`` holds the decoded value of every live key the watch has seen (and
that ``keep`` accepts); a deleted or purged key leaves it; a value that does not decode is
logged and skipped (the key keeps what it had). If the watch fails it starts over after
``retry_delay``; the replay then also drops keys deleted while it was away. ``on_change``
runs, in order, after each change to ``items`` (a key added, replaced or removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from nats.js import JetStreamContext

from burst_core import logs
from burst_core.bus import _natspy
from burst_core.bus.kv import kv_deleted

log = logs.get("burst.bus")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Decoder(Protocol[T_co]):
    """What decodes a value (a ``msgspec`` decoder for the bucket's type)."""

    def decode(self, buf: bytes, /) -> T_co: ...


@dataclass(frozen=True)
class KVChange(Generic[T]):
    """One change to a mirror: ``value`` None when the key left it (deleted, purged, or
    no longer kept); ``previous`` what it held before (None when new)."""

    key: str
    value: T | None
    previous: T | None
    revision: int


OnChange = Callable[[KVChange[T]], object]  # what it returns is awaited if awaitable


class KVMirror(Generic[T]):
    """Watches ``bucket`` and keeps ``items`` (key -> decoded value) current.

    ``keep`` (optional) says which decoded values the mirror holds (a value it rejects
    counts as the key leaving). ``items`` (optional) is the dict to keep current, when the
    caller has one (a cache it also writes itself). ``on_change`` (optional, plain or
    async) is told each change; what it raises is logged, the mirror goes on."""

    def __init__(self, js: JetStreamContext, bucket: str, decoder: Decoder[T], *,
                 on_change: OnChange[T] | None = None,
                 keep: Callable[[T], bool] | None = None,
                 retry_delay: float = 1.0, what: str = "",
                 items: dict[str, T] | None = None) -> None:
        self.js = js
        self.bucket = bucket
        self.decoder = decoder
        self.on_change = on_change
        self.keep = keep
        self.retry_delay = retry_delay
        self.what = what or bucket
        self.items: dict[str, T] = {} if items is None else items
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._closed = False

    # The dict's reading side, for callers that treat the mirror as one.
    def get(self, key: str) -> T | None:
        return self.items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    async def start(self, timeout: float = 10.0) -> None:
        """Start watching; returns once the bucket's current entries are applied."""
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"mirror:{self.bucket}")
        await asyncio.wait_for(asyncio.shield(self.loaded.wait()), timeout)

    async def stop(self) -> None:
        # Stopping the watcher ends its iteration even if a cancel got lost in nats-py.
        self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        # An ordered-consumer watch replays the latest value of every key, in stream order,
        # then follows (bus.connect renews it at once after a server restart). If it fails,
        # start over: the replay is idempotent.
        #
        # The replay ends at the stream's last sequence as it was before the watch began:
        # nats-py's end-of-replay marker (None) can come early (when messages are on their
        # way as it checks, or under concurrent writes), which would mark the mirror loaded
        # with keys missing, and on a restart drop keys that are still there.
        while not self._closed:
            watcher: Any = None
            replayed: set[str] | None = set()
            try:
                kv = await self.js.key_value(self.bucket)
                boundary = (await kv.status()).stream_info.state.last_seq
                watcher = self._watcher = await kv.watchall()
                if self._closed:
                    break
                if boundary == 0:  # an empty bucket: nothing to replay
                    await self._replayed(set())
                    replayed = None
                last = 0  # the last revision applied
                async for entry in watcher:
                    if entry is not None:
                        if replayed is not None:
                            replayed.add(entry.key)
                        await self._apply(entry)
                        last = max(last, entry.revision or 0)
                    # The replay is done at the boundary, or (when the boundary's message
                    # left the stream) once the server has nothing more to send than what
                    # was applied.
                    if replayed is not None and await self._replay_done(
                            watcher, entry, last, boundary):
                        await self._replayed(replayed)
                        replayed = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from e
                log.warning("watch_failed", bucket=self.bucket, error=repr(e))
            finally:
                if self._watcher is watcher:
                    self._watcher = None
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            if not self._closed:
                await asyncio.sleep(self.retry_delay)

    @staticmethod
    async def _replay_done(watcher: Any, entry: Any, last: int, boundary: int) -> bool:
        if last >= boundary:
            return True
        # Asked at nats-py's marker (None) and at an entry with nothing pending after it.
        return (entry is None or entry.delta == 0) and await _natspy.watch_caught_up(watcher,
                                                                                    last)

    async def _replayed(self, replayed: set[str]) -> None:
        """The replay is complete: drop what it did not name, and say the mirror is loaded."""
        await self._drop_unseen(replayed)
        self.loaded.set()

    async def _apply(self, entry: Any) -> None:
        key, revision = entry.key, entry.revision or 0
        value: T | None = None
        if not kv_deleted(entry):
            try:
                value = self.decoder.decode(entry.value)
            except Exception as e:
                log.warning(f"{self.what}_undecodable", bucket=self.bucket, key=key,
                            error=repr(e))
                return
            if self.keep is not None and not self.keep(value):
                value = None
        await self._set(key, value, revision)

    async def _drop_unseen(self, replayed: set[str]) -> None:
        """After a replay, remove the keys it did not name (deleted meanwhile)."""
        for key in [k for k in self.items if k not in replayed]:
            await self._set(key, None, 0)

    async def _set(self, key: str, value: T | None, revision: int) -> None:
        previous = self.items.get(key)
        if value is None:
            if key not in self.items:
                return
            del self.items[key]
        else:
            self.items[key] = value
        if self.on_change is None:
            return
        try:
            res = self.on_change(KVChange(key, value, previous, revision))
            if inspect.isawaitable(res):
                await res
        except Exception as e:
            log.exception("mirror_on_change_failed", bucket=self.bucket, key=key,
                          error=repr(e))
