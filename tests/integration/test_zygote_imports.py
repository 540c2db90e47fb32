"""The zygote's pre-imports (``BURST_ZYGOTE_IMPORTS``, what a GPU function's image declares)
and its unsandboxed forks (``BURST_ZYGOTE_UNSANDBOXED``, a GPU machine without bubblewrap),
on the process runtime alone: no cluster, the test plays the agent's end of the socket.

A module that sleeps at import stands in for torch: the container's function sees it
imported already, by another process (the zygote). A stand-in torch whose CUDA is
initialised at import stands in for an import that initialises CUDA: that zygote is refused
and the container still starts, as a fresh interpreter."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst import Image, wire
from burst._serialization import deserialize, serialize
from burst_agent.runtimes import zygote as zyg
from burst_agent.runtimes.factory import parse_imports
from burst_agent.runtimes.images import ImageContainerSpec
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.runtimes.venvs import VenvRuntime

pytestmark = pytest.mark.integration

#: Seconds the stand-in module sleeps at import: a container that imported it itself
#: would say so (its pid), whatever the machine's speed.
SLOW = """
import os, time
time.sleep(2)
IMPORTED_BY = os.getpid()
"""

#: A stand-in torch whose import initialises CUDA (as a careless import would).
CUDA_AT_IMPORT = """
class cuda:
    @staticmethod
    def is_initialized():
        return True
"""

APP = """
import os, sys


def f():
    pre = "slowmod" in sys.modules
    import slowmod
    return {"preimported": pre, "imported_by": slowmod.IMPORTED_BY, "me": os.getpid(),
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""


class Shim:
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

    async def next_of(self, kind: type, timeout: float = 60.0) -> object:
        async with asyncio.timeout(timeout):
            while True:
                f = await self.frames.get()
                if f is None or isinstance(f, kind):
                    return f


@pytest.fixture
def tree(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="burst-zy-"))  # short: unix socket paths are limited
    (d / "mods").mkdir()
    (d / "mods" / "slowmod.py").write_text(SLOW)
    (d / "cudamods" / "torch").mkdir(parents=True)
    (d / "cudamods" / "torch" / "__init__.py").write_text(CUDA_AT_IMPORT)
    (d / "bundle").mkdir()
    (d / "bundle" / "zy_app.py").write_text(APP)
    # The zygote and fresh interpreters import as the agent does (its PYTHONPATH).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(d / "mods"), str(d / "cudamods"), os.environ.get("PYTHONPATH", "")]))
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def call_f(rt: ProcessRuntime | VenvRuntime, d: Path, name: str,
                 image: wire.ImageSpec | None = None) -> dict[str, object]:
    shim = Shim(d / f"{name}.sock")
    await shim.start()
    spec = ImageContainerSpec(container_id=name, bundle_dir=d / "bundle",
                              socket_path=shim.path, module="zy_app", qualname="f", cpu=0.25,
                              memory_mb=256, gpu_indices=[0], image=image)
    handle = await rt.start(spec)
    try:
        assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
        assert shim.writer is not None
        shim.writer.write(wire.frame(wire.RunInput(input_id="in-1", call_id="call-1",
                                                   payload=serialize(((), {})))))
        done = await shim.next_of(wire.InputDone)
        assert isinstance(done, wire.InputDone) and done.status == "success", done
        out: dict[str, object] = deserialize(done.payload)
        out["forked"] = handle.child_pid is not None
        return out
    finally:
        handle.signal(signal.SIGKILL)
        await asyncio.wait_for(handle.wait(), 30)
        shim.server.close()


async def test_unsandboxed_fork_has_the_declared_imports_done(tree: Path) -> None:
    rt = ProcessRuntime(zygote=True, zygote_unsandboxed=True, zygote_imports=["slowmod"])
    try:
        assert rt.zygote is not None
        out = await call_f(rt, tree, "pre")
    finally:
        await rt.aclose()
    # The function found slowmod imported already, by another process: the zygote.
    assert out["forked"] is True, out
    assert out["preimported"] is True, out
    assert out["imported_by"] != out["me"], out
    assert out["cuda_visible"] == "0", out  # the container's own environment


async def test_image_declared_imports_are_done_by_the_zygote(tree: Path) -> None:
    """``with image.imports(): import slowmod`` in the app: deploying it (the runtime's
    ``prepare``) has the zygote import slowmod before the first container."""
    image = Image.debian_slim()
    with image.imports():
        import slowmod  # noqa: F401
    spec = image._spec
    assert spec.imports == ["slowmod"]
    base = ProcessRuntime(zygote=True, zygote_unsandboxed=True)
    rt = VenvRuntime(base, lambda python: ProcessRuntime(python))
    try:
        await rt.prepare(spec)
        assert base.zygote is not None and base.zygote.imports == ["slowmod"]
        out = await call_f(rt, tree, "img", image=spec)
    finally:
        await base.aclose()
    assert out["forked"] is True, out
    assert out["preimported"] is True and out["imported_by"] != out["me"], out


async def test_without_preimport_the_container_imports_itself(tree: Path) -> None:
    """The control: the same fork with nothing declared imports slowmod in the container."""
    rt = ProcessRuntime(zygote=True, zygote_unsandboxed=True)
    try:
        out = await call_f(rt, tree, "nopre")
    finally:
        await rt.aclose()
    assert out["forked"] is True, out
    assert out["preimported"] is False and out["imported_by"] == out["me"], out


async def test_zygote_that_initialised_cuda_is_refused(tree: Path) -> None:
    """An import that initialises CUDA in the zygote: it refuses to fork (naming why), and
    the container starts as a fresh interpreter instead."""
    z = zyg.Zygote(sys.executable, imports=["torch"])
    with pytest.raises(zyg.ZygoteError, match=r"torch\.cuda\.is_initialized\(\) is true after "
                                              r"importing torch; CUDA must be initialised "
                                              r"only in the container"):
        await z.ensure()
    z.close()
    rt = ProcessRuntime(zygote=True, zygote_unsandboxed=True,
                        zygote_imports=["torch", "slowmod"])
    try:
        out = await call_f(rt, tree, "cuda")
    finally:
        await rt.aclose()
    assert out["forked"] is False, out  # a fresh interpreter
    assert out["preimported"] is False and out["imported_by"] == out["me"], out


def test_bad_import_names_are_refused() -> None:
    assert parse_imports(" torch , numpy.linalg,") == ["torch", "numpy.linalg"]
    with pytest.raises(ValueError, match=r"'torch-cuda' is not a module name"):
        parse_imports("torch-cuda")
