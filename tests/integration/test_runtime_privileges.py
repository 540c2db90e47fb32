"""No user-controlled code runs outside the sandbox or as root on the agent's machine (the
process runtime as root, sandboxed, with the zygote), on the runtime alone: no cluster.

- A venv image (``pip_install``) of a local package whose build backend (an sdist's
  arbitrary code) and whose ``.pth`` file (processed by ``site`` at interpreter start) each
  try to write a host path and say which uid they ran as: the backend runs in the build's
  sandbox as the sandbox uid; the ``.pth`` only in the container, in its sandbox.
- An image's root filesystem whose ``run_commands`` drops a ``.pth`` into the image's
  site-packages that tries to write the host through ``/proc/<pid>/root``: it runs only in the
  container (its own pid namespace, the sandbox uid), never in a root zygote."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst import Image, wire
from burst._serialization import deserialize, serialize
from burst_agent.runtimes import images, rootfs
from burst_agent.runtimes.images import ImageContainerSpec
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.runtimes.sandbox import Sandbox
from burst_agent.runtimes.venvs import VenvRuntime

pytestmark = pytest.mark.integration

BACKEND = '''
import os, zipfile

HOST = @HOST@
try:  # arbitrary code of a package's build, as pip runs it
    with open(os.path.join(HOST, "backend-ran"), "w") as f:
        f.write(str(os.getuid()))
except OSError:
    pass
with open("/tmp/backend-uid", "w") as f:  # (the build's own /tmp: never the host's)
    f.write(str(os.getuid()))


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "evilpkg-1.0-py3-none-any.whl"
    files = {
        "evil_hook.py": HOOK,
        "evil.pth": "import evil_hook\\n",
        "evilpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: evilpkg\\nVersion: 1.0\\n",
        "evilpkg-1.0.dist-info/WHEEL": ("Wheel-Version: 1.0\\nGenerator: t\\n"
                                        "Root-Is-Purelib: true\\nTag: py3-none-any\\n"),
    }
    record = "".join(f"{n},,\\n" for n in files) + "evilpkg-1.0.dist-info/RECORD,,\\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr("evilpkg-1.0.dist-info/RECORD", record)
    return name


HOOK = """
import os
UID = os.getuid()
PID = os.getpid()
try:
    with open(os.path.join(@HOST@, "pth-ran"), "w") as f:
        f.write(str(UID))
except OSError:
    pass
"""
'''

APP = """
import os, sys


def f():
    hook = sys.modules.get("evil_hook")
    return {"uid": os.getuid(), "me": os.getpid(), "prefix": sys.prefix,
            "hook_uid": getattr(hook, "UID", None), "hook_pid": getattr(hook, "PID", None),
            "image_hooks": [m for m in sys.modules if m.startswith("zz_sec_")],
            "secdep": getattr(_module("secdep"), "VALUE", None),
            "helper": getattr(_module("sec_helper"), "VALUE", None)}


def _module(name):
    try:
        return __import__(name)
    except ImportError:
        return None

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

    async def next_of(self, kind: type, timeout: float = 120.0) -> object:
        async with asyncio.timeout(timeout):
            while True:
                f = await self.frames.get()
                if f is None or isinstance(f, kind):
                    return f


def _wheel(where: Path, name: str, source: str) -> None:
    """A tiny pure-Python wheel of the module ``name``."""
    info = f"{name}-1.0.dist-info"
    files = {f"{name}.py": source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    with zipfile.ZipFile(where / f"{name}-1.0-py3-none-any.whl", "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    for p in (where, *where.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _require_root_sandbox() -> None:
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        pytest.skip("needs root and bubblewrap (the sandboxed process runtime)")


@pytest.fixture
def tree(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A test dir (short: socket paths), its own machine cache, and a host dir nothing in
    a sandbox sees (``/var/tmp``), writable by root only."""
    d = Path(tempfile.mkdtemp(prefix="burst-sec-"))
    host = Path(tempfile.mkdtemp(prefix="burst-sec-host-", dir="/var/tmp"))
    os.chmod(host, 0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(d / "cache"))
    (d / "bundle").mkdir()
    (d / "bundle" / "sec_app.py").write_text(APP)
    d.joinpath("host").symlink_to(host)
    yield d
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(host, ignore_errors=True)


def _runtime(d: Path, name: str, store: rootfs.Store | None = None) -> VenvRuntime:
    box = Sandbox.detect("on", f"sec-{name}-{os.getpid()}", str(d / "home"))
    state = d / "home" / "containers"

    def in_venv(python: str) -> ProcessRuntime:
        return ProcessRuntime(python, box, state, zygote=True,
                              venv=str(Path(python).parent.parent))

    def in_image(view: rootfs.View) -> ProcessRuntime:
        return ProcessRuntime(view.python, box, state, zygote=True, view=view)

    base = ProcessRuntime(sandbox=box, state_dir=state, zygote=True)
    return VenvRuntime(base, in_venv, store=store, make_view=in_image)


async def call_f(rt: VenvRuntime, d: Path, name: str,
                 image: wire.ImageSpec) -> tuple[dict[str, object], bool]:
    shim = Shim(d / f"{name}.sock")
    await shim.start()
    spec = ImageContainerSpec(container_id=name, bundle_dir=d / "bundle",
                              socket_path=shim.path, module="sec_app", qualname="f", cpu=0.25,
                              memory_mb=256, image=image)
    handle = await rt.start(spec)
    try:
        assert isinstance(await shim.next_of(wire.Ready), wire.Ready)
        assert shim.writer is not None
        shim.writer.write(wire.frame(wire.RunInput(input_id="in-1", call_id="call-1",
                                                   payload=serialize(((), {})))))
        done = await shim.next_of(wire.InputDone)
        assert isinstance(done, wire.InputDone) and done.status == "success", done
        return deserialize(done.payload), getattr(handle, "child_pid", None) is not None
    finally:
        handle.signal(signal.SIGKILL)
        await asyncio.wait_for(handle.wait(), 30)
        shim.server.close()


async def test_venv_package_code_never_runs_as_root_on_the_host(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_root_sandbox()
    host = tree / "host"
    # The package's source, where the build's sandbox can read it (the machine's venvs).
    src = images.cache_dir("venvs") / "src-evilpkg"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = []
        build-backend = "evil_backend"
        backend-path = ["."]
        [project]
        name = "evilpkg"
        version = "1.0"
    """))
    (src / "evil_backend.py").write_text(BACKEND.replace("@HOST@", repr(str(host.resolve()))))
    for p in (images.cache_dir("venvs"), src, *src.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    # Beside it, what a build must still do confined: a package found through the machine's
    # pip configuration (here PIP_FIND_LINKS: a dir outside any sandbox), a local module.
    links = Path(tempfile.mkdtemp(prefix="burst-sec-links-", dir="/var/tmp"))
    _wheel(links, "secdep", "VALUE = 7\n")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    (tree / "mods").mkdir()
    (tree / "mods" / "sec_helper.py").write_text("VALUE = 42\n")
    sys.path.insert(0, str(tree / "mods"))
    try:
        image = (Image.debian_slim().pip_install("secdep", extra_options="--no-index")
                 .pip_install(str(src), extra_options="--no-index")
                 .add_local_python_source("sec_helper"))._spec
    finally:
        sys.path.remove(str(tree / "mods"))
    rt = _runtime(tree, "venv")
    try:
        out, forked = await call_f(rt, tree, "venv1", image)
    finally:
        shutil.rmtree(links, ignore_errors=True)
        await rt.base.aclose()
        for r in rt._runtimes.values():
            await r.aclose()
    # Neither the build backend nor the .pth reached the host path (they ran sandboxed).
    assert sorted(os.listdir(host)) == [], {p: (host / p).read_text()
                                            for p in os.listdir(host)}
    assert forked, "the container should be a fork of the venv's zygote"
    # The .pth was processed, in the container itself, as the sandbox uid.
    assert out["uid"] == 65534, out
    assert out["hook_uid"] == 65534, out
    assert out["hook_pid"] == out["me"], out
    assert out["secdep"] == 7 and out["helper"] == 42, out
    assert str(out["prefix"]).startswith(str(images.cache_dir("venvs"))), out
    # The venv is root's again once built (the sandbox uid cannot change it afterwards).
    venv = Path(str(out["prefix"]))
    assert venv.stat().st_uid == 0
    assert all(p.lstat().st_uid == 0 for p in venv.rglob("*")), \
        [p for p in venv.rglob("*") if p.lstat().st_uid != 0][:5]


async def test_image_code_never_runs_as_root_on_the_host(tree: Path) -> None:
    _require_root_sandbox()
    if not rootfs.Store(tree / "probe").available_versions():
        pytest.skip("no base for debian_slim here (Docker's burst-base:py311 or debootstrap)")
    host = tree / "host"
    # The host's root, seen through a process outside the sandbox: the agent's (this
    # test's), the interpreter's parent, init.
    where = f"{host.resolve()}/image-pth-ran"
    hook = textwrap.dedent(f"""
        import os
        for root in ("/proc/{os.getpid()}/root", f"/proc/{{os.getppid()}}/root",
                     "/proc/1/root"):
            try:
                with open(root + {where!r}, "w") as f:
                    f.write(str(os.getuid()))
            except OSError:
                pass
    """)
    mod = f"zz_sec_{os.getpid()}"
    image = Image.debian_slim().run_commands(
        "d=$(python3 -c 'import site; print(site.getsitepackages()[0])') && mkdir -p \"$d\" && "
        f"printf %s {shlex.quote(hook)} > \"$d/{mod}.py\" && "
        f"echo 'import {mod}' > \"$d/{mod}.pth\"")._spec
    store = rootfs.Store(images.cache_dir("rootfs"))
    rt = _runtime(tree, "img", store=store)
    try:
        out, forked = await call_f(rt, tree, "img1", image)
        out2, _ = await call_f(rt, tree, "img2", image)
    finally:
        await rt.base.aclose()
        for r in rt._views.values():
            await r.aclose()
        store.unmount_mine()
    assert os.listdir(host) == [], {p: (host / p).read_text() for p in os.listdir(host)}
    assert out["uid"] == 65534 and out2["uid"] == 65534, (out, out2)
    # The image's .pth was processed, in the container (as the image's python does).
    assert out["image_hooks"] == [mod], out
    assert forked, "the image's container should come from the zygote (a spare sandbox)"


def test_image_build_steps_never_get_the_hosts_network(tree: Path) -> None:
    """A build step on an agent whose containers get no network gets none either: not the
    host's (its loopback, where the cluster's servers listen)."""
    _require_root_sandbox()
    store = rootfs.Store(images.cache_dir("rootfs"))
    if not store.available_versions():
        pytest.skip("no base for debian_slim here (Docker's burst-base:py311 or debootstrap)")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    probe = (f"import socket; s = socket.socket(); s.settimeout(5); "
             f"print(s.connect_ex(('127.0.0.1', {port})))")
    image = Image.debian_slim().run_commands(
        f"python3 -c {shlex.quote(probe)} > /opt/sec-reach-{os.getpid()}")._spec
    try:
        view = store.materialise(image, lambda line: None)
        reach = (view.root / f"opt/sec-reach-{os.getpid()}").read_text().strip()
    finally:
        server.close()
        store.unmount_mine()
    assert reach != "0", "a build step connected to the host's loopback"
