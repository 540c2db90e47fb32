"""The process runtime on its own (no cluster): real bwrap, real cgroups, real forks.

Each test plays the agent's side of the shim socket: it accepts the container's
connection and reads frames. Run for containers as fresh interpreters and as zygote forks.
Without bubblewrap (or not as root, which the cgroups and the uid drop need) these tests
skip, except under ``CI``, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from burst import wire
from burst_agent.runtimes.base import ContainerSpec
from burst_agent.runtimes.process import ProcessHandle, ProcessRuntime
from burst_agent.runtimes.sandbox import Sandbox

pytestmark = pytest.mark.integration

APP = """
import os, threading, time


def f(mib=0):
    return len([bytearray(1 << 20) for _ in range(mib)])  # zero-filled: really touched


def bomb(cap, hold):
    # A fork bomb with a hard cap: children that wait on a pipe, until ``cap`` of them,
    # a failed fork or 8 s; says how many on stdout, holds them ``hold`` s, lets them go.
    r, w = os.pipe()
    kids, error = [], ""
    deadline = time.monotonic() + 8
    while len(kids) < cap and time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # EOF once the parent closes its end
            os._exit(0)
        kids.append(pid)
    print(f"holding {len(kids)}", flush=True)
    time.sleep(hold)
    os.close(w)
    os.close(r)
    for pid in kids:
        os.waitpid(pid, 0)
    return {"started": len(kids), "error": error}

"""
#: The containers' pids limit in these tests (small, so a fork bomb reaches it cheaply).
PIDS_LIMIT = 64


def _require_sandbox() -> None:
    why = ""
    if shutil.which("bwrap") is None:
        why = "bubblewrap (bwrap) is not installed"
    elif os.geteuid() != 0:
        why = "the sandbox's uid drop and cgroups need root"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)


class Shim:
    """The agent's end of one container's socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames: asyncio.Queue[object] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._on, path=str(self.path))

    async def _on(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writer = w
        try:
            while True:
                header = await r.readexactly(4)
                body = await r.readexactly(struct.unpack(">I", header)[0])
                await self.frames.put(wire.from_shim_decoder.decode(body))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            await self.frames.put(None)

    async def next_of(self, kind: type, timeout: float = 30.0) -> object:
        async with asyncio.timeout(timeout):
            while True:
                f = await self.frames.get()
                if f is None or isinstance(f, kind):
                    return f


@pytest.fixture(params=["fresh", "zygote", "spare"])
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[ProcessRuntime]:
    """A fresh interpreter per container; a zygote fork into a sandbox made for it; a
    zygote fork into the spare sandbox made ahead (the first container takes it)."""
    _require_sandbox()
    home = Path(tempfile.mkdtemp(prefix="burst-rt-home-", dir="/var/tmp"))
    box = Sandbox.detect("on", f"rt-{request.param}-{os.getpid()}", str(home),
                         pids_limit=PIDS_LIMIT)
    rt = ProcessRuntime(sandbox=box, state_dir=home / "containers",
                        zygote=request.param != "fresh", spares=request.param == "spare")
    if request.param == "spare":
        assert await rt.spare_ready(30)
    rt.test_home = home  # type: ignore[attr-defined]
    yield rt
    await rt.aclose()
    shutil.rmtree(home, ignore_errors=True)


async def start(rt: ProcessRuntime, name: str, sockets: Path, memory_mb: int = 128,
                qualname: str = "f") -> tuple[ProcessHandle, Shim]:
    home: Path = rt.test_home  # type: ignore[attr-defined]
    bundle = home / "bundle"
    if not bundle.exists():
        bundle.mkdir()
        (bundle / "rt_app.py").write_text(APP)
    shim = Shim(sockets / f"{name}.sock")
    await shim.start()
    spec = ContainerSpec(container_id=name, bundle_dir=bundle, socket_path=shim.path,
                         module="rt_app", qualname=qualname, cpu=0.25, memory_mb=memory_mb)
    handle = await rt.start(spec)
    assert isinstance(handle, ProcessHandle)
    return handle, shim


@pytest.fixture
def sockets() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="burst-"))  # short: unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_sigterm_reaches_the_user_process(runtime: ProcessRuntime, sockets: Path) -> None:
    handle, shim = await start(runtime, "term", sockets)
    ready = await shim.next_of(wire.Ready)
    assert isinstance(ready, wire.Ready)
    handle.signal(signal.SIGTERM)
    code = await asyncio.wait_for(handle.wait(), 30)
    # The shim's SIGTERM handler ran (a clean exit), rather than the sandbox being torn
    # down around it (which would read as a kill).
    assert code == 0, code
    assert handle.exit_reason() == ""


async def test_sigkill_ends_the_whole_sandbox(runtime: ProcessRuntime, sockets: Path) -> None:
    handle, shim = await start(runtime, "kill", sockets)
    ready = await shim.next_of(wire.Ready)
    assert isinstance(ready, wire.Ready)
    handle.signal(signal.SIGKILL)
    code = await asyncio.wait_for(handle.wait(), 30)
    assert code != 0
    assert await shim.next_of(wire.Ready, timeout=10) is None  # the socket closed
    # Nothing of it is left: its cgroup (gone only once empty) and private dir went too.
    assert handle.cgroup is not None
    assert not any(d.exists() for d in handle.cgroup.dirs.values())
    assert handle.private_dir is not None and not handle.private_dir.exists()


async def test_many_containers_start_at_once(runtime: ProcessRuntime, sockets: Path) -> None:
    n = 12
    started = await asyncio.gather(*(start(runtime, f"many{i}", sockets) for i in range(n)))
    try:
        readies = await asyncio.gather(*(s.next_of(wire.Ready, 60) for _, s in started))
        assert all(isinstance(r, wire.Ready) for r in readies), readies
    finally:
        for h, _ in started:
            h.signal(signal.SIGKILL)
        await asyncio.gather(*(h.wait() for h, _ in started))


async def test_out_of_memory_names_the_limit(runtime: ProcessRuntime, sockets: Path) -> None:
    from burst._serialization import deserialize, serialize

    handle, shim = await start(runtime, "oom", sockets, memory_mb=64)
    assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
    assert shim.writer is not None
    # Within the limit: answered.
    shim.writer.write(wire.frame(wire.RunInput(
        input_id="in-1", call_id="call-1", payload=serialize(((8,), {})))))
    done = await shim.next_of(wire.InputDone)
    assert isinstance(done, wire.InputDone) and deserialize(done.payload) == 8, done
    assert handle.exit_reason() == ""
    # Past it: killed, and the runtime says why.
    shim.writer.write(wire.frame(wire.RunInput(
        input_id="in-2", call_id="call-2", payload=serialize(((256,), {})))))
    code = await asyncio.wait_for(handle.wait(), 60)
    assert code != 0
    assert handle.exit_reason() == "out of memory (limit 64 MiB)"


async def test_fork_bomb_stops_at_the_pids_limit(runtime: ProcessRuntime,
                                                 sockets: Path) -> None:
    """A fork bomb in one container gets EAGAIN at the container's pids limit, while
    another container keeps answering and the host can still fork. Bounded if the limit
    is broken: the bomb stops at twice the limit by itself, and is killed after 10 s."""
    from burst._serialization import deserialize, serialize

    (bomb, bomb_shim), (other, other_shim) = await asyncio.gather(
        start(runtime, "bomb", sockets, memory_mb=512, qualname="bomb"),
        start(runtime, "other", sockets))
    try:
        for shim in (bomb_shim, other_shim):
            assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
            assert shim.writer is not None
        assert bomb_shim.writer is not None and other_shim.writer is not None
        async with asyncio.timeout(10):  # the bomb's whole life
            bomb_shim.writer.write(wire.frame(wire.RunInput(
                input_id="bomb", call_id="bomb",
                payload=serialize(((2 * PIDS_LIMIT, 4.0), {})))))
            holding = await bomb_shim.next_of(wire.Log)
            assert isinstance(holding, wire.Log) and holding.line.startswith("holding")
            # While the bomb holds what it started: the other container answers...
            other_shim.writer.write(wire.frame(wire.RunInput(
                input_id="ping", call_id="ping", payload=serialize(((1,), {})))))
            pong = await other_shim.next_of(wire.InputDone)
            assert isinstance(pong, wire.InputDone) and deserialize(pong.payload) == 1, pong
            # ... and the host forks.
            host = await asyncio.create_subprocess_exec("true")
            assert await host.wait() == 0
            done = await bomb_shim.next_of(wire.InputDone)
        assert isinstance(done, wire.InputDone) and done.status == "success", done
        out = deserialize(done.payload)
        # The shim and the sandbox's own processes count too: the bomb gets a little less
        # than the limit, then EAGAIN.
        assert PIDS_LIMIT // 2 < out["started"] < PIDS_LIMIT, out
        assert "Resource temporarily unavailable" in out["error"], out
        # A pids cgroup of its own did it.
        assert bomb.cgroup is not None
        assert (bomb.cgroup.dirs["pids"] / "pids.max").read_text().strip() == str(PIDS_LIMIT)
        assert int((bomb.cgroup.dirs["pids"] / "pids.events").read_text().split()[1]) > 0
    finally:
        for h in (bomb, other):
            h.signal(signal.SIGKILL)
        await asyncio.gather(*(asyncio.wait_for(h.wait(), 30) for h in (bomb, other)))
    # Its cgroups went with it.
    assert bomb.cgroup is not None
    assert not any(d.exists() for d in bomb.cgroup.dirs.values())


async def test_spare_sandbox_is_taken_then_replaced(sockets: Path) -> None:
    """The first container takes the spare (its bundle and socket linked in, its own
    cgroups); another spare is made behind it; a bundle too big for linking, or a
    container with GPUs, makes its own sandbox and leaves the spare."""
    _require_sandbox()
    home = Path(tempfile.mkdtemp(prefix="burst-rt-home-", dir="/var/tmp"))
    box = Sandbox.detect("on", f"rt-spare-{os.getpid()}", str(home))
    rt = ProcessRuntime(sandbox=box, state_dir=home / "containers", zygote=True)
    rt.test_home = home  # type: ignore[attr-defined]
    try:
        assert await rt.spare_ready(30)
        handle, shim = await start(rt, "took", sockets)
        assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
        spare_dir = handle.private_dir
        assert spare_dir is not None and spare_dir.name.startswith("spare-")
        assert handle.cgroup is not None
        assert all(d.name == "took" for d in handle.cgroup.dirs.values())
        assert await rt.spare_ready(30)  # the next one
        rt.spare_bundle_files = 0
        own, own_shim = await start(rt, "own", sockets)
        assert isinstance(await own_shim.next_of(wire.Ready), wire.Ready)
        assert own.private_dir is not None and own.private_dir.name == "own"
        assert await rt.spare_ready(0)  # left for the next container
        for h in (handle, own):
            h.signal(signal.SIGKILL)
            await asyncio.wait_for(h.wait(), 30)
        assert not spare_dir.exists()
    finally:
        await rt.aclose()
        shutil.rmtree(home, ignore_errors=True)
