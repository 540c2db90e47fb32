"""The Docker runtime: each container is a Docker container of the function's image.

Images are built on the agent's engine, once per content hash (the image spec, Burst's shim
wheel and the base image's id together), from a Dockerfile generated from the spec
(``images.dockerfile``); build output goes to the agent's log and to the app's logs, and a
failed build is an ``ImageError`` naming the failing step. Burst is not on a package index,
so the shim arrives as a wheel built from this checkout (``pip wheel --no-deps``) with the
wheels of its two dependencies, installed offline in a layer right above the base.

Containers are hardened by default: a non-root uid, every capability dropped,
no-new-privileges, the agent's own bridge network with deny rules (``network.py``: the
internet, never the host, the cluster or private ranges; ``network_mode="none"`` with
``block_network=True``), the agent's unix socket bind mounted, the bundle read-only, CPU
and memory limits from the function's resources, the agent's pids limit
(``BURST_CONTAINER_PIDS_LIMIT``). GPUs go through device requests, only the assigned ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest, Mount

from burst.image import PYTHON_SOURCE_DIR
from burst_agent.runtimes import images
from burst_agent.runtimes.base import ContainerSpec
from burst_agent.runtimes.images import ImageContainerSpec, ImageError
from burst_agent.runtimes.sandbox import DEFAULT_PIDS_LIMIT, check_pids_limit
from burst_core import logs

log = logs.get("burst.agent.docker")

#: Lines of build output an ImageError carries.
ERROR_TAIL = 30
_STEP = re.compile(r"^Step (\d+)/(\d+) :")
_EXIT = re.compile(r"returned a non-zero code: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def checkout_root() -> Path:
    """The source checkout this agent runs from (where the shim wheel is built)."""
    import burst

    root = Path(burst.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ImageError(f"Burst's shim wheel: no checkout with pyproject.toml at {root} (the "
                         "Docker runtime builds the shim from Burst's source)")
    return root


def build_wheels(dest: Path) -> list[str]:
    """Wheels of Burst (from the checkout) and of the shim's dependencies, into ``dest``.

    The checkout's sources are copied to a scratch dir first: builds of two agents (or of
    an agent and a developer) never share a ``build/`` directory.
    """
    import cloudpickle
    import msgspec

    root = checkout_root()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="burst-wheel-") as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
        src.mkdir()
        shutil.copy2(root / "pyproject.toml", src / "pyproject.toml")
        for d in ("libs", "services"):
            shutil.copytree(root / d, src / d, ignore=ignore)
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest)]
        for argv in (pip + [str(src)],
                     pip + [f"msgspec=={msgspec.__version__}",
                            f"cloudpickle=={cloudpickle.__version__}"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise ImageError("Burst's shim layer: pip wheel failed\n"
                                 + (done.stdout + done.stderr)[-4000:])
    return sorted(p.name for p in dest.glob("*.whl"))


def source_hash() -> str:
    """A hash of the checkout's sources the wheel is built from (and of the shim's
    dependencies' versions): the key of the machine-wide wheel cache."""
    import cloudpickle
    import msgspec

    root = checkout_root()
    h = hashlib.sha256(f"{msgspec.__version__} {cloudpickle.__version__}".encode())
    files = [root / "pyproject.toml"]
    for d in ("libs", "services"):
        files += [p for p in (root / d).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                  and not any(part.endswith(".egg-info") for part in p.parts)]
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def cached_wheels() -> Path:
    """The shim's wheels for the checkout as it is now, built once per machine."""
    dest = images.cache_dir("wheels") / source_hash()
    if (dest / ".ready").exists():
        return dest
    tmp = dest.with_name(f"{dest.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_wheels(tmp)
        (tmp / ".ready").write_text("ok\n")
        with contextlib.suppress(OSError):  # another agent finished first: keep its copy
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def wheels_hash(dest: Path) -> str:
    """A hash of the wheels' contents (not of the zip files, which carry timestamps)."""
    h = hashlib.sha256()
    for whl in sorted(dest.glob("*.whl")):
        h.update(whl.name.encode())
        with zipfile.ZipFile(whl) as z:
            for name in sorted(z.namelist()):
                if name.endswith("RECORD"):
                    continue
                h.update(name.encode())
                h.update(z.read(name))
    return h.hexdigest()


class DockerHandle:
    """A running Docker container; stdout and stderr are streamed from its logs."""

    def __init__(self, container: Any, memory_mb: int) -> None:
        self.container = container
        self.memory_mb = memory_mb
        self.pid: int | None = int(container.attrs.get("State", {}).get("Pid") or 0) or None
        loop = asyncio.get_running_loop()
        self.stdout: asyncio.StreamReader | None = asyncio.StreamReader()
        self.stderr: asyncio.StreamReader | None = asyncio.StreamReader()
        self._reason = ""
        self._code: int | None = None
        self._threads = [self._follow(loop, self.stdout, stdout=True),
                         self._follow(loop, self.stderr, stdout=False)]

    def _follow(self, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader,
                stdout: bool) -> threading.Thread:
        def run() -> None:
            try:
                for chunk in self.container.logs(stdout=stdout, stderr=not stdout,
                                                 stream=True, follow=True):
                    loop.call_soon_threadsafe(reader.feed_data, chunk)
            except Exception:  # the container is gone: the stream simply ends
                pass
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(reader.feed_eof)

        t = threading.Thread(target=run, name=f"logs-{self.container.name}", daemon=True)
        t.start()
        return t

    async def wait(self) -> int:
        if self._code is not None:
            return self._code
        result = await asyncio.to_thread(self._wait)
        self._code = result
        return result

    def _wait(self) -> int:
        try:
            code = int(self.container.wait().get("StatusCode", -1))
        except docker.errors.NotFound:
            return -1
        try:
            self.container.reload()
            if self.container.attrs.get("State", {}).get("OOMKilled"):
                self._reason = f"out of memory (limit {self.memory_mb} MiB)"
        except docker.errors.APIError:
            pass
        for t in self._threads:
            t.join(timeout=2.0)
        with contextlib.suppress(docker.errors.APIError):
            self.container.remove(force=True)
        return code

    def signal(self, sig: int) -> None:
        with contextlib.suppress(docker.errors.APIError):  # not running (any more)
            self.container.kill(signal=int(sig))

    def exit_reason(self) -> str:
        return self._reason


class DockerRuntime:
    """Containers on the local Docker engine (``DOCKER_HOST`` is honoured)."""

    name = "docker"

    def __init__(self, state_dir: Path, uid: int = 65534, cpu_headroom: float = 1.0,
                 gpu_devices: bool = True, client: Any = None,
                 pids_limit: int = DEFAULT_PIDS_LIMIT, network_mode: str = "none") -> None:
        self.state_dir = state_dir
        #: Containers' network (``network.docker_network``); block_network=True: none.
        self.network_mode = network_mode
        #: Under compose: asked at each start instead (``network.NetrulesCheck``).
        self.network_check: Callable[[], str] | None = None
        self.uid = uid
        self.cpu_headroom = cpu_headroom
        #: Tasks one container may have at once (AgentSettings.container_pids_limit).
        self.pids_limit = check_pids_limit(pids_limit)
        #: False on an agent with a declared (not real) GPU inventory: no device requests,
        #: the assigned indices are only named in the environment.
        self.gpu_devices = gpu_devices
        self.client = client or docker.from_env(max_pool_size=512)
        #: Marks this agent's containers (its state dir is unique on the machine, the agent
        #: id need not be): a restarted agent removes what its predecessor left running.
        self.owner = str(state_dir)
        if client is None:
            self._remove_leftovers()
        self._built: dict[str, str] = {}  # image content hash -> tag
        self._locks: dict[str, asyncio.Lock] = {}
        self._wheels: tuple[list[str], str] | None = None
        self._wheel_dir = Path()
        self._wheels_lock = asyncio.Lock()

    def _remove_leftovers(self) -> None:
        try:
            left = self.client.containers.list(
                all=True, filters={"label": f"burst.owner={self.owner}"})
        except docker.errors.APIError as e:
            log.warning("docker_list_failed", error=str(e))
            return
        for c in left:
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        if left:
            log.info("leftover_containers_removed", count=len(left))

    # ---- images --------------------------------------------------------------------
    async def _shim_wheels(self) -> tuple[list[str], str]:
        async with self._wheels_lock:
            if self._wheels is None:
                self._wheel_dir = await asyncio.to_thread(cached_wheels)
                names = sorted(p.name for p in self._wheel_dir.glob("*.whl"))
                self._wheels = names, await asyncio.to_thread(wheels_hash, self._wheel_dir)
                log.info("shim_wheels", wheels=names, dir=str(self._wheel_dir))
            return self._wheels

    async def image_tag(self, image: Any, emit: Callable[[str], None] | None = None) -> str:
        """The tag of a function's image, built first if this agent has not built it."""
        key = image.content_hash if image is not None else "default"
        if key in self._built:
            return self._built[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._built:
                self._built[key] = await self._build(image, emit)
        return self._built[key]

    async def prepare(self, image: Any, emit: Callable[[str], None] | None = None) -> str:
        """Build a function's image ahead of its containers (at deployment)."""
        return await self.image_tag(image, emit)

    async def _build(self, image: Any, emit: Callable[[str], None] | None) -> str:
        base = images.base_tag(image)
        try:
            base_id = (await asyncio.to_thread(self.client.images.get, base)).id
        except docker.errors.ImageNotFound:
            if image is not None and image.base == "registry":
                raise ImageError(f"Image.from_registry({base!r}): the image is not on this "
                                 "agent's Docker engine and no registry is reachable (load or "
                                 "build it there first)") from None
            raise ImageError(f"the base image {base} is missing on this agent's Docker engine: "
                             "build it with deploy/base-image.sh") from None
        if image is not None and image.add_python:  # the Python comes from this one
            py = images.BASE_IMAGES.get(image.add_python, "")
            try:
                base_id += (await asyncio.to_thread(self.client.images.get, py)).id
            except docker.errors.ImageNotFound:
                raise ImageError(f"add_python={image.add_python!r}: the base image {py} is "
                                 "missing on this agent's Docker engine: build it with "
                                 "deploy/base-image.sh") from None
        wheels, whash = await self._shim_wheels()
        df = images.dockerfile(image, wheels)
        digest = hashlib.sha256(f"{df.text}\0{whash}\0{base_id}".encode())
        for name, data in sorted(df.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        tag = f"burst-image:{digest.hexdigest()[:24]}"
        with contextlib.suppress(docker.errors.ImageNotFound):
            await asyncio.to_thread(self.client.images.get, tag)
            return tag  # built by an earlier agent on this engine
        ctx = self.state_dir / "build" / tag.split(":")[1]
        shutil.rmtree(ctx, ignore_errors=True)
        (ctx / "wheels").mkdir(parents=True)
        for w in wheels:
            shutil.copy2(self._wheel_dir / w, ctx / "wheels" / w)
        for rel, data in df.files.items():
            p = ctx / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        (ctx / "Dockerfile").write_text(df.text)
        log.info("image_build_started", tag=tag, steps=len(df.labels))
        loop = asyncio.get_running_loop()

        def say(line: str) -> None:
            log.info("image_build", tag=tag, line=line)
            if emit is not None:
                loop.call_soon_threadsafe(emit, line)

        try:
            await asyncio.to_thread(self._run_build, ctx, tag, df, say)
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
        log.info("image_built", tag=tag)
        return tag

    def _run_build(self, ctx: Path, tag: str, df: images.Dockerfile,
                   say: Callable[[str], None]) -> None:
        """Stream the build: each instruction announced in the user's words, its output,
        and its time; a failure names the step with the last lines of output."""
        tail: list[str] = []
        step = total = 0
        started = time.monotonic()
        build_start = started

        def finish() -> None:
            if step:
                say(f"Step {step}/{total} took {time.monotonic() - started:.1f} s")

        for chunk in self._stream(ctx, tag):
            if "error" in chunk:
                what = df.labels.get(step, f"instruction {step}")
                err = str(chunk["error"]).strip()
                code = _EXIT.search(err)
                if code:  # not the (possibly very long) command line again
                    err = f"exit code {code.group(1)}"
                say(f"Step {step}/{total} failed after {time.monotonic() - started:.1f} s: {err}")
                raise ImageError(f"image build failed at {what}: {err}\n" + "\n".join(tail))
            for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
                if not line.strip():
                    continue
                m = _STEP.match(line)
                if m:
                    finish()
                    step, total = int(m.group(1)), int(m.group(2))
                    started = time.monotonic()
                    line = f"Step {step}/{total}: {df.labels.get(step, line)}"
                say(line)
                tail = [*tail[-(ERROR_TAIL - 1):], line]
        finish()
        say(f"image built in {time.monotonic() - build_start:.1f} s")

    def _stream(self, ctx: Path, tag: str) -> Iterator[dict[str, Any]]:
        try:
            yield from self.client.api.build(path=str(ctx), tag=tag, rm=True, forcerm=True,
                                             decode=True, pull=False)
        except docker.errors.APIError as e:
            raise ImageError(f"image build failed: {e.explanation or e}") from None

    # ---- containers ----------------------------------------------------------------
    def _env(self, spec: ContainerSpec, image_env: dict[str, str]) -> dict[str, str]:
        gpus = ",".join(str(i) for i in spec.gpu_indices)
        if spec.gpu_indices and self.gpu_devices:
            # The device request shows only the assigned GPUs, numbered from 0.
            cuda = ",".join(str(i) for i in range(len(spec.gpu_indices)))
        else:
            # Declared inventory: no real device, but the indices named as on real hardware.
            cuda = gpus
        path = f"{images.BUNDLE_DIR}:{PYTHON_SOURCE_DIR}"
        if image_env.get("PYTHONPATH"):
            path += ":" + image_env["PYTHONPATH"]
        return {
            **image_env,
            "HOME": "/tmp",
            "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "BURST_SHIM_SOCKET": images.SOCKET_PATH,
            "BURST_SHIM_MODULE": spec.module,
            "BURST_SHIM_QUALNAME": spec.qualname,
            "BURST_CONTAINER_ID": spec.container_id,
            "NVIDIA_VISIBLE_DEVICES": gpus or "void",
            "CUDA_VISIBLE_DEVICES": cuda,
            **spec.env,
        }

    def run_options(self, spec: ContainerSpec, image_env: dict[str, str],
                    workdir: str) -> dict[str, Any]:
        """The ``containers.create`` options of a container (hardening and limits)."""
        memory = spec.memory_limit_mb or spec.memory_mb
        cpus = spec.cpu_limit or min(spec.cpu + self.cpu_headroom, float(os.cpu_count() or 1))
        opts: dict[str, Any] = dict(
            command=["python3", "-m", "burst._shim"],
            name=f"burst-{spec.container_id}",
            labels={"burst.container_id": spec.container_id, "burst.owner": self.owner},
            user=f"{self.uid}:{self.uid}",
            working_dir=workdir or images.BUNDLE_DIR,
            environment=self._env(spec, image_env),
            network_mode="none" if spec.block_network else (
                self.network_check() if self.network_check else self.network_mode),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mounts=[Mount(images.BUNDLE_DIR, str(spec.bundle_dir), type="bind", read_only=True),
                    # The container's own socket only, not the agent's socket directory.
                    Mount(images.SOCKET_PATH, str(spec.socket_path), type="bind"),
                    # Volumes: directories the agent materialised (volumes.py).
                    *(Mount(path, str(host), type="bind", read_only=ro)
                      for host, path, ro in spec.mounts)],
            nano_cpus=max(int(cpus * 1e9), 10_000_000),
            cpu_shares=max(2, int(spec.cpu * 1024)),
            mem_limit=f"{memory}m",
            memswap_limit=f"{memory}m",
            pids_limit=self.pids_limit,
            # tini as pid 1: signals reach the shim, orphans of user code are reaped.
            init=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},
        )
        if spec.gpu_indices and self.gpu_devices:
            opts["device_requests"] = [DeviceRequest(
                driver="nvidia", device_ids=[str(i) for i in spec.gpu_indices],
                capabilities=[["gpu"]])]
        return opts

    async def start(self, spec: ContainerSpec) -> DockerHandle:
        image = spec.image if isinstance(spec, ImageContainerSpec) else None
        emit = spec.build_log if isinstance(spec, ImageContainerSpec) else None
        tag = await self.image_tag(image, emit)
        df_env: dict[str, str] = {}
        workdir = ""
        for step in image.steps if image is not None else []:
            if step.kind == "env":
                df_env.update(step.env)
            elif step.kind == "workdir":
                workdir = step.path
        if os.geteuid() == 0:
            os.chown(spec.socket_path, self.uid, self.uid)
        os.chmod(spec.socket_path, 0o600)
        opts = self.run_options(spec, df_env, workdir)

        def create_and_start() -> Any:
            c = self.client.containers.create(tag, **opts)
            try:
                c.start()
                c.reload()
            except BaseException:
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
                raise
            return c

        container = await asyncio.to_thread(create_and_start)
        return DockerHandle(container, spec.memory_limit_mb or spec.memory_mb)
