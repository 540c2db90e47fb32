"""Images built when a function is deployed, not only when its first container starts.

Every agent follows ``function_deployed`` events and builds each new image once (the
runtime's ``prepare``: a Docker image, a virtual environment), sending the build's output
to the app's logs as ``[image build]`` lines, framed by one line each that ``burst deploy``
waits for (``burst.image.BUILD_STATUS``): ``image <hash> building on agent <id>`` first,
then ``... ready on agent <id> in <s> s`` or ``... failed on agent <id>: <why>``. Runs
(``burst run``) are left to their containers' start, whose output the run follows. A
container that starts meanwhile waits for the same build (the runtimes build each image
once, under a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from burst import wire
from burst.image import build_status
from burst_core import logs, names
from burst_core.schemas import FunctionDeployed, LogLine, encode

if TYPE_CHECKING:
    from burst_agent.agent import Agent

log = logs.get("burst.agent.prebuild")

_Decoder = msgspec.msgpack.Decoder(FunctionDeployed)


def prepare_of(runtime: Any) -> Callable[[wire.ImageSpec, Callable[[str], None]],
                                         Awaitable[object]] | None:
    """The runtime's ``prepare(image, emit)``, if it builds images ahead of containers."""
    prepare = getattr(runtime, "prepare", None)
    return prepare if callable(prepare) else None


class Prebuilder:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._sub: Subscription | None = None
        #: Images built (or being built) here, by content hash.
        self._seen: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if prepare_of(self.agent.runtime) is None:
            return
        self._sub = await self.agent.nc.subscribe(names.function_deployed_subject("*.*.*"),
                                                  cb=self._on_deployed)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_deployed(self, msg: Msg) -> None:
        try:
            event = _Decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        image = event.function.image
        if (event.ephemeral or image is None or not image.content_hash
                or image.content_hash in self._seen):
            return
        self._seen.add(image.content_hash)
        task = asyncio.create_task(self._build(event, image))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _build(self, event: FunctionDeployed, image: wire.ImageSpec) -> None:
        prepare = prepare_of(self.agent.runtime)
        assert prepare is not None
        short = image.content_hash[:12]
        nc = self.agent.nc

        def emit(line: str) -> None:
            msg = LogLine(workspace=event.workspace, app=event.app,
                          function=event.function.name, container_id="", line=f"[image build] "
                          f"{line}", at=time.time())
            task = asyncio.ensure_future(nc.publish(
                names.log_subject(names.function_key(event.workspace, event.app,
                                                     event.function.name)), encode(msg)))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

        me = self.agent.agent_id
        started = time.monotonic()
        emit(build_status(short, "building", me))
        try:
            await prepare(image, emit)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("prebuild_failed", image=short, error=first)
            emit(build_status(short, "failed", me, f": {first}"))
            self._seen.discard(image.content_hash)  # a later deployment tries again
            return
        emit(build_status(short, "ready", me, f" in {time.monotonic() - started:.1f} s"))
