"""An image's spare sandbox already runs the image's own python (``process.py``), on the
runtime alone (root, bubblewrap, the zygote; no cluster).

- Before a container takes it, the spare python is the sandbox uid with no capabilities and
  no-new-privs, in a cgroup of its own, has imported what the image declares
  (``Image.imports()``) and has nothing of a container in its environment (no secret, no
  container id).
- A container taking it is served by that same process: it gets the secret and its id, its
  cgroup has the container's limits (and name), and it sees no host path.
- A pruned image's spare sandbox is closed before its layer goes: both are gone.
- Containers with GPUs get a spare per GPU set, made after the set's first use, with that
  set's device nodes (stand-ins made by mknod) and ``CUDA_VISIBLE_DEVICES``; the least
  recently used set gives way, and an idle set's spare is closed.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import stat
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from burst import Image, wire
from burst._serialization import deserialize, serialize
from burst_agent.runtimes import images, rootfs
from burst_agent.runtimes import sandbox as sb
from burst_agent.runtimes.images import ImageContainerSpec
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.runtimes.sandbox import Sandbox
from burst_agent.runtimes.venvs import VenvRuntime

REPO = Path(__file__).resolve().parents[2]
TOKEN = uuid.uuid4().hex[:10]
SECRET = f"s3cret-{TOKEN}"
#: Seconds a spare python may take to be ready on a loaded machine (2 cores, many users).
SPARE_WAIT = 240.0

APP = """
import glob, os, sys, time


def f(paths):
    mod = sys.modules.get("zz_spare_mod")
    with open("/proc/1/cmdline", "rb") as fh:
        init = fh.read().decode(errors="replace")
    return {"uid": os.getuid(), "secret": os.environ.get("MY_SECRET"),
            "container_id": os.environ.get("BURST_CONTAINER_ID"),
            "imported_at": getattr(mod, "AT", None), "now": time.time(),
            "visible": [p for p in paths if os.path.exists(p)],
            "env_with_host_path": [k for k, v in os.environ.items()
                                   if any(p in v for p in paths)],
            "init_cmdline": init, "cwd": os.getcwd(),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "devices": sorted(glob.glob("/dev/nvidia*")),
            "ld_path": os.environ.get("LD_LIBRARY_PATH", "")}
"""

#: A module only the image has (in its site-packages), declared by ``Image.imports()``.
MODULE = "import time\nAT = time.time()\n"


def _require_root_sandbox() -> None:
    why = ""
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        why = "needs root and bubblewrap (the sandboxed process runtime)"
    elif not rootfs.Store(Path(tempfile.mkdtemp(prefix="burst-probe-"))).available_versions():
        why = "no base for debian_slim here (Docker's burst-base:py311 or debootstrap)"
    if why:
        if os.environ.get("CI"):  # CI provides both: a missing one is a failure there
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

    async def next_of(self, kind: type, timeout: float = 120.0) -> object:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if frame is None or isinstance(frame, kind):
                    return frame


@pytest.fixture
def tree() -> Iterator[Path]:
    """A test dir (short: socket paths) with the app's bundle."""
    d = Path(tempfile.mkdtemp(prefix="burst-spare-"))
    (d / "bundle").mkdir()
    (d / "bundle" / "spare_app.py").write_text(APP)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _runtime(d: Path, name: str, **kw: float) -> VenvRuntime:
    box = Sandbox.detect("on", f"spare-{name}-{os.getpid()}", str(d / "home"))
    state = d / "home" / "containers"

    def in_image(view: rootfs.View) -> ProcessRuntime:
        return ProcessRuntime(view.python, box, state, zygote=True, view=view,
                              spare_timeout=SPARE_WAIT, **kw)  # type: ignore[arg-type]

    base = ProcessRuntime(sandbox=box, state_dir=state, zygote=False)
    return VenvRuntime(base, lambda python: base, store=rootfs.Store(images.cache_dir("rootfs")),
                       make_view=in_image)


def _image(marker: str) -> wire.ImageSpec:
    """A Debian image with a module of its own, declared as imported by its functions."""
    image = Image.debian_slim().run_commands(
        f"echo {marker} > /opt/marker",
        "d=$(python3 -c 'import site; print(site.getsitepackages()[0])') && mkdir -p \"$d\" && "
        f"printf %s {shlex.quote(MODULE)} > \"$d/zz_spare_mod.py\"")._spec
    return msgspec.structs.replace(image, imports=["zz_spare_mod"])


async def _ready_spare(rt: VenvRuntime, image: wire.ImageSpec) -> tuple[rootfs.View,
                                                                         ProcessRuntime]:
    view, prt = await rt._view_of(image, None)
    assert await prt.spare_ready(SPARE_WAIT), "no spare sandbox was made for the image"
    return view, prt


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw.split(b"\0")
                if b"=" in kv)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.timeout(900)
async def test_spare_python_is_unprivileged_until_a_container_takes_it(tree: Path) -> None:
    _require_root_sandbox()
    rt = _runtime(tree, "claim")
    image = _image(f"claim-{TOKEN}")
    shim = Shim(tree / "c1.sock")
    await shim.start()
    handle = None
    try:
        _view, prt = await _ready_spare(rt, image)
        spare = prt._spare
        assert spare is not None and spare.pid is not None and spare.cgroup is not None
        pid = spare.pid
        # Before the claim: the image's own python, as the sandbox uid, no capabilities,
        # no-new-privs, in a cgroup of its own, with nothing of a container.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"burst._shim.spare" in cmdline, cmdline
        status = _status(pid)
        assert status["Uid"].split() == ["65534"] * 4, status["Uid"]
        assert status["Gid"].split() == ["65534"] * 4, status["Gid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
        assert int(status["CapPrm"], 16) == 0 and status["NoNewPrivs"] == "1", status
        env = _environ(pid)
        assert "BURST_CONTAINER_ID" not in env and "MY_SECRET" not in env, env.keys()
        assert not [k for k, v in env.items() if SECRET in v]
        assert env.get("BURST_SPARE_SANDBOX") == "1", env.keys()
        spare_cgroup = spare.cgroup.dirs["memory"]
        assert spare_cgroup.name.startswith("spare-"), spare_cgroup
        assert str(pid) in (spare_cgroup / "cgroup.procs").read_text().split()
        assert int((spare_cgroup / "memory.limit_in_bytes").read_text()) == 1024 << 20

        claimed_at = time.time()
        spec = ImageContainerSpec(container_id=f"spare{TOKEN}", bundle_dir=tree / "bundle",
                                  socket_path=shim.path, module="spare_app", qualname="f",
                                  cpu=0.25, memory_mb=300, env={"MY_SECRET": SECRET},
                                  image=image)
        handle = await rt.start(spec)
        # The same process serves the container.
        assert getattr(handle, "child_pid", None) == pid
        assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
        assert shim.writer is not None
        # Host paths the image does not have: Burst's checkout, this test's dir, a file.
        host_file = Path("/var/tmp") / f"burst-spare-host-{TOKEN}"
        host_file.write_text("host")
        host_paths = [str(REPO), str(tree), str(host_file)]
        shim.writer.write(wire.frame(wire.RunInput(
            input_id="in-1", call_id="call-1", payload=serialize(((host_paths,), {})))))
        done = await shim.next_of(wire.InputDone)
        assert isinstance(done, wire.InputDone) and done.status == "success", done
        out = deserialize(done.payload)
        assert out["secret"] == SECRET and out["container_id"] == spec.container_id, out
        assert out["uid"] == 65534, out
        # Its image module was imported by the spare, before the container existed.
        assert out["imported_at"] is not None and out["imported_at"] < claimed_at, out
        assert out["visible"] == [] and out["env_with_host_path"] == [], out
        assert not any(p in out["init_cmdline"] for p in host_paths), out
        # Its cgroup now has the container's limits, and its name.
        cg = handle.cgroup.dirs["memory"]
        assert cg.name == spec.container_id, cg
        assert int((cg / "memory.limit_in_bytes").read_text()) == 300 << 20
        assert str(pid) in (cg / "cgroup.procs").read_text().split()
        assert not spare_cgroup.exists()
        # Tools find it by its container id (its environment block was rewritten).
        after = _environ(pid)
        assert after.get("BURST_CONTAINER_ID") == spec.container_id, after.keys()
        # Another spare is made behind it.
        assert await prt.spare_ready(SPARE_WAIT)
        assert prt._spare is not None and prt._spare.pid != pid
    finally:
        Path("/var/tmp", f"burst-spare-host-{TOKEN}").unlink(missing_ok=True)
        if handle is not None:
            handle.signal(signal.SIGKILL)
            await asyncio.wait_for(handle.wait(), 60)
        shim.server.close()
        for r in list(rt._views.values()):
            await r.aclose()
        assert rt.store is not None
        rt.store.unmount_mine()


@pytest.mark.timeout(900)
async def test_a_pruned_images_spare_and_layer_are_gone(tree: Path) -> None:
    _require_root_sandbox()
    rt = _runtime(tree, "prune")
    marker = f"prune-{TOKEN}"
    image = _image(marker)
    store = rt.store
    assert store is not None
    try:
        view, prt = await _ready_spare(rt, image)
        spare = prt._spare
        assert spare is not None and spare.pid is not None
        pid = spare.pid
        layer = next(p for p in view.uses if marker in (p / "meta.json").read_text())
        # Only this image's layer is old enough to go (the shared base stays).
        old = time.time() - 10 * 86400
        os.utime(layer / "meta.json", (old, old))
        # While its spare sandbox runs, it has the image mounted: still pruned.
        removed = await rt.prune(older_than_days=5)
        assert layer.name in removed, removed
        assert not layer.exists()
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _gone(pid), f"the pruned image's spare python (pid {pid}) still runs"
        assert view.key not in rt._views
    finally:
        for r in list(rt._views.values()):
            await r.aclose()
        store.unmount_mine()



async def _call(rt: VenvRuntime, d: Path, name: str, image: wire.ImageSpec,
                gpus: list[int]) -> tuple[dict[str, object], int | None]:
    """One container of ``f`` on ``gpus``: its result and its host pid (a spare's, if)."""
    shim = Shim(d / f"{name}.sock")
    await shim.start()
    spec = ImageContainerSpec(container_id=name, bundle_dir=d / "bundle",
                              socket_path=shim.path, module="spare_app", qualname="f",
                              cpu=0.25, memory_mb=256, env={"MY_SECRET": SECRET},
                              gpu_indices=gpus, image=image)
    handle = await rt.start(spec)
    try:
        assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
        assert shim.writer is not None
        shim.writer.write(wire.frame(wire.RunInput(
            input_id="in-1", call_id="call-1", payload=serialize((([],), {})))))
        done = await shim.next_of(wire.InputDone)
        assert isinstance(done, wire.InputDone) and done.status == "success", done
        return deserialize(done.payload), getattr(handle, "child_pid", None)
    finally:
        handle.signal(signal.SIGKILL)
        await asyncio.wait_for(handle.wait(), 60)
        shim.server.close()


@pytest.mark.timeout(900)
async def test_gpu_containers_on_an_image_use_a_spare_per_gpu_set(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_root_sandbox()
    # Stand-ins for the NVIDIA device nodes (char 1:3, what /dev/null is), in a dir of the
    # test's own: nothing of the host's /dev changes.
    dev = tree / "dev"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia0", "nvidia1"):
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    monkeypatch.setattr(sb, "GPU_DEV_DIR", str(dev))
    idle = 20.0
    rt = _runtime(tree, "gpu", gpu_spares=1, gpu_spare_idle=idle)
    image = _image(f"gpu-{TOKEN}")
    try:
        _view, prt = await rt._view_of(image, None)
        # The set's first use starts as before; its spare is made behind it.
        out, pid = await _call(rt, tree, "g1", image, [0])
        assert out["cuda"] == "0" and out["devices"] == ["/dev/nvidia0", "/dev/nvidiactl"], out
        assert await prt.gpu_spare_ready((0,), SPARE_WAIT), "no spare for the GPU set (0,)"
        spare = prt._gpu_spares[(0,)]
        assert spare.pid is not None and spare.pid != pid
        spare_pid = spare.pid
        status = _status(spare_pid)
        assert status["Uid"].split() == ["65534"] * 4 and int(status["CapEff"], 16) == 0
        env = _environ(spare_pid)
        assert env.get("CUDA_VISIBLE_DEVICES") == "0", env
        assert "MY_SECRET" not in env and "BURST_CONTAINER_ID" not in env, env.keys()
        assert stat.S_ISCHR(os.stat(f"/proc/{spare_pid}/root/dev/nvidia0").st_mode)
        assert not os.path.exists(f"/proc/{spare_pid}/root/dev/nvidia1")
        # The next container of that set is served by the spare.
        out, pid = await _call(rt, tree, "g2", image, [0])
        assert pid == spare_pid, (pid, spare_pid)
        assert out["secret"] == SECRET and out["cuda"] == "0", out
        assert out["devices"] == ["/dev/nvidia0", "/dev/nvidiactl"], out
        assert sb.GPU_DRIVER_DIR in str(out["ld_path"]), out
        assert await prt.gpu_spare_ready((0,), SPARE_WAIT)  # another behind it
        behind = prt._gpu_spares[(0,)].pid
        assert behind is not None
        # Another set: with one GPU set kept per image, the least recently used gives way.
        out, _pid = await _call(rt, tree, "g3", image, [1])
        assert out["devices"] == ["/dev/nvidia1", "/dev/nvidiactl"], out
        assert await prt.gpu_spare_ready((1,), SPARE_WAIT), "no spare for the GPU set (1,)"
        one = prt._gpu_spares[(1,)].pid
        assert one is not None
        assert (0,) not in prt._gpu_spares
        deadline = time.monotonic() + 30
        while not _gone(behind) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _gone(behind), "the least recently used GPU set's spare still runs"
        # An idle set's spare is closed.
        deadline = time.monotonic() + idle + 60
        while not _gone(one) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert _gone(one) and (1,) not in prt._gpu_spares, "an idle GPU set's spare stayed"
    finally:
        for r in list(rt._views.values()):
            await r.aclose()
        assert rt.store is not None
        rt.store.unmount_mine()
