"""Images on the process runtime: a cached virtual environment per image.

Without Docker, an image's ``pip_install*``, ``uv_pip_install`` (uv from the package index,
given the machine's pip settings as its own) and ``add_local_python_source`` steps build a
virtual environment, once per content hash and kept across agent restarts; its ``env`` steps
become the container's environment (``images.process_env``). Images with any other step
(or another Python, or ``from_registry``) get a root filesystem instead (``rootfs.py``);
:class:`VenvRuntime` sends each container to the right one.

The environment sees its own packages first, then the agent's (a ``.pth`` added after the
installs, so pip never touches the agent's packages): Burst's shim comes from the agent. Each
environment gets a process runtime of its own, so a zygote per environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from burst import wire
from burst.image import PYTHON_SOURCE_DIR, describe
from burst_agent.runtimes import images, rootfs
from burst_agent.runtimes.base import ContainerHandle, ContainerSpec
from burst_agent.runtimes.images import ImageContainerSpec, ImageError
from burst_agent.runtimes.process import ProcessRuntime
from burst_agent.runtimes.sandbox import PRIVATE, Sandbox, hide_args, interpreter_env
from burst_core import logs

log = logs.get("burst.agent.venvs")

#: Steps a virtual environment is built from.
VENV_STEPS = ("add_local_python_source", "uv_pip_install", *images.PIP_STEPS)


def needs_venv(image: wire.ImageSpec | None) -> bool:
    return image is not None and any(s.kind in VENV_STEPS for s in image.steps)


class VenvRuntime:
    """The process runtime, with a virtual environment per image that needs one."""

    name = "process"

    def __init__(self, base: ProcessRuntime, make: Callable[[str], ProcessRuntime],
                 cache_dir: Path | None = None, store: rootfs.Store | None = None,
                 make_view: Callable[[rootfs.View], ProcessRuntime] | None = None,
                 warm_images: int = 4, evict_interval: float = 10.0) -> None:
        self.base = base
        self.make = make
        self.cache_dir = cache_dir or images.cache_dir("venvs")
        self._runtimes: dict[str, ProcessRuntime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Images with their own root filesystem (``rootfs.py``): a runtime per view.
        self.store = store
        self.make_view = make_view
        self._views: dict[str, ProcessRuntime] = {}
        #: Image runtimes kept warm (their zygote and spare sandbox): the most recently
        #: used; an older one with no container running is closed (made again when needed).
        self.warm_images = warm_images
        #: Views materialised by this agent, by image content hash.
        self._ready: dict[str, rootfs.View] = {}
        self._evicted = 0.0
        #: Seconds between two looks at the image store's disk budget (after a start).
        self.evict_interval = evict_interval

    async def start(self, spec: ContainerSpec) -> ContainerHandle:
        image = spec.image if isinstance(spec, ImageContainerSpec) else None
        emit = spec.build_log if isinstance(spec, ImageContainerSpec) else None
        if rootfs.needs_rootfs(image):
            assert image is not None
            return await self._start_in_rootfs(spec, image, emit)
        if image is None or not needs_venv(image):
            if image is not None and image.imports:
                await self.base.want_imports(image.imports)
            return await self.base.start(spec)
        rt = await self._venv_runtime(image, emit)
        return await rt.start(spec)

    async def _venv_runtime(self, image: wire.ImageSpec,
                            emit: Callable[[str], None] | None) -> ProcessRuntime:
        python = await self.venv(image, emit)
        if python not in self._runtimes:
            self._runtimes[python] = self.make(python)
        rt = self._runtimes[python]
        if image.imports:
            await rt.want_imports(image.imports)
        return rt

    async def prepare(self, image: wire.ImageSpec,
                      emit: Callable[[str], None] | None = None) -> None:
        """Build a function's image ahead of its containers (at deployment)."""
        if rootfs.needs_rootfs(image):
            await self._view_of(image, emit)
        elif needs_venv(image):
            if image.imports:  # its runtime's zygote imports them now
                await self._venv_runtime(image, emit)
            else:
                await self.venv(image, emit)
        elif image.imports:  # the zygote imports them now, ahead of the first call
            await self.base.want_imports(image.imports)

    async def _start_in_rootfs(self, spec: ContainerSpec, image: wire.ImageSpec,
                               emit: Callable[[str], None] | None) -> ContainerHandle:
        """Materialise the image (once; cached per step) and start the container in it."""
        view, rt = await self._view_of(image, emit)
        assert self.store is not None
        store = self.store
        store.in_use[view.key] = store.in_use.get(view.key, 0) + 1
        try:
            handle = await rt.start(spec)
        except BaseException:
            self._release(view.key)
            raise
        # Past the disk budget: the least recently used images no container uses go.
        if time.monotonic() - self._evicted > self.evict_interval:
            self._evicted = time.monotonic()
            task = asyncio.get_running_loop().create_task(self.evict())
            task.add_done_callback(_log_failure)
        return _Released(handle, lambda: self._release(view.key))

    def _spares(self) -> dict[str, list[int]]:
        """Spare sandboxes of images no container of this agent runs (key: a pid in each)."""
        assert self.store is not None
        out: dict[str, list[int]] = {}
        for key, rt in self._views.items():
            pids = rt.spare_pids()
            if pids and not self.store.in_use.get(key):
                out[key] = pids
        return out

    def _closer(self) -> Callable[[set[str]], None]:
        """For the store (in a thread): close these images' runtimes (their spare sandbox
        and zygote) on the agent's loop, returning once their spares are gone."""
        loop = asyncio.get_running_loop()

        async def close(keys: set[str]) -> None:
            rts = [self._views.pop(k) for k in keys if k in self._views]
            await asyncio.gather(*(rt.aclose() for rt in rts), return_exceptions=True)
            log.info("image_spares_closed", images=sorted(keys))

        def run(keys: set[str]) -> None:
            asyncio.run_coroutine_threadsafe(close(keys), loop).result(timeout=60)

        return run

    async def evict(self) -> list[str]:
        """Past the disk budget, the least recently used images no container uses go (their
        spare sandboxes closed first)."""
        assert self.store is not None
        return await asyncio.to_thread(self.store.evict, self._spares(), self._closer())

    async def prune(self, older_than_days: float = 0.0) -> list[str]:
        """``burst image prune`` from within the agent: images unused for that long go,
        their spare sandboxes closed first."""
        assert self.store is not None
        return await asyncio.to_thread(self.store.prune, older_than_days, True,
                                       self._spares(), self._closer())

    async def _view_of(self, image: wire.ImageSpec, emit: Callable[[str], None] | None
                       ) -> tuple[rootfs.View, ProcessRuntime]:
        """The image's root filesystem (materialised once; cached per step) and the
        process runtime that runs containers in it."""
        if self.store is None or self.make_view is None or not self.base.sandboxed:
            raise ImageError(f"{_image_words(image)} needs its own root filesystem, which the "
                             "process runtime runs only inside its sandbox (install bubblewrap; "
                             "BURST_SANDBOX must not be off)")
        store, make_view = self.store, self.make_view
        lock = self._locks.setdefault(f"rootfs-{image.content_hash}", asyncio.Lock())
        loop = asyncio.get_running_loop()

        def say(line: str) -> None:
            log.info("image_build", image=image.content_hash, line=line)
            if emit is not None:
                loop.call_soon_threadsafe(emit, line)

        store.loop = loop  # (build steps' network is set up on it)
        async with lock:
            view = self._ready.get(image.content_hash)
            if view is not None and os.path.ismount(view.root) and all(
                    (p / "meta.json").exists() for p in view.uses):
                store.touch(view.uses)  # built and mounted: no build, no probe
            else:
                view = await asyncio.to_thread(store.materialise, image, say)
                self._ready[image.content_hash] = view
            rt = self._views.pop(view.key, None)
            if rt is None or rt.view is None or rt.view.root != view.root:
                if rt is not None:
                    rt.close()
                rt = make_view(view)
            self._views[view.key] = rt  # (last: the most recently used)
            if image.imports:  # its spare python imports them ahead
                rt.want_spare_imports(image.imports)
            self._cool(keep=view.key)
        return view, rt

    def _cool(self, keep: str) -> None:
        """Close the least recently used image runtimes past ``warm_images`` that run no
        container (their zygote and spare sandbox go; running containers are not theirs
        to stop anyway)."""
        assert self.store is not None
        for key in list(self._views):
            if len(self._views) <= self.warm_images:
                return
            if key != keep and not self.store.in_use.get(key):
                self._views.pop(key).close()

    def _release(self, key: str) -> None:
        assert self.store is not None
        left = self.store.in_use.get(key, 0) - 1
        if left > 0:
            self.store.in_use[key] = left
        else:
            self.store.in_use.pop(key, None)

    async def venv(self, image: wire.ImageSpec, emit: Callable[[str], None] | None) -> str:
        """The interpreter of the image's environment, built first if missing."""
        # The agent's interpreter is part of the key: its packages are the fallback.
        key = f"{image.content_hash}-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]}"
        root = self.cache_dir / key
        python = str(root / "bin" / "python")
        if (root / ".burst-ready").exists():
            return python
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if not (root / ".burst-ready").exists():
                loop = asyncio.get_running_loop()

                def say(line: str) -> None:
                    log.info("venv_build", key=key, line=line)
                    if emit is not None:
                        loop.call_soon_threadsafe(emit, line)

                # As root with a sandbox: the user's installs run confined.
                box = (self.base.sandbox if self.base.sandboxed and os.geteuid() == 0
                       else None)
                await asyncio.to_thread(build_venv, image, root, say, box, loop)
        return python


def build_venv(image: wire.ImageSpec, root: Path, say: Callable[[str], None],
               box: Sandbox | None = None,
               loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Build the environment in a scratch dir beside ``root``, then move it into place.

    With ``box`` (a sandboxed agent, as root) every step that runs or writes what the user
    named (pip's and uv's installs, an sdist's build backend, the image's files) runs in
    the containers' sandbox as the sandbox uid: only the scratch dir writable, the network
    the containers get (set up on ``loop``), the machine's pip configuration and CA
    certificates readable. Only then does root take the finished tree back (never following
    a link in it)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(root.parent, 0o755)
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    scratch = root.with_name(root.name + f".scratch-{os.getpid()}")
    for d in (tmp, scratch):
        shutil.rmtree(d, ignore_errors=True)
    confined = _Confined(box, tmp, scratch, loop) if box is not None else None
    try:
        _run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], say,
             "creating the virtual environment")
        site = Path(subprocess.check_output(
            [str(tmp / "bin" / "python"), "-c", "import sysconfig;print(sysconfig.get_paths()"
             "['purelib'])"], text=True).strip())
        if confined is not None:
            confined.hand_over()
        run = confined.run if confined is not None else _run
        steps = [s for s in image.steps if s.kind in VENV_STEPS]
        build_start = time.monotonic()
        for i, step in enumerate(steps, 1):
            what = describe(step)
            say(f"Step {i}/{len(steps)}: {what}")
            started = time.monotonic()
            if confined is not None:
                confined.allow_links(step, what)
            if step.kind in images.PIP_STEPS:
                run([sys.executable, "-m", "pip", "--python", str(tmp / "bin" / "python"),
                     "install", "--no-input", "--disable-pip-version-check",
                     *images.pip_options(step), *step.args], say, what, step.env)
            elif step.kind == "uv_pip_install":
                uv, uv_env = uv_binary(say)
                if confined is not None:
                    confined.readable.append(str(Path(uv).parent.parent))
                run([uv, "pip", "install", "--python", str(tmp / "bin" / "python"),
                     *images.pip_options(step, uv=True), *step.args], say, what,
                    {**uv_env, **step.env})
            elif step.kind == "add_local_python_source":
                # A package: its directory; a module: its file, into site-packages.
                dest = site if step.path == PYTHON_SOURCE_DIR else site / Path(step.path).name
                _add_files(dest, step.files, what, confined, say)
                say(f"{what}: {len(step.files)} files")
            say(f"Step {i}/{len(steps)} took {time.monotonic() - started:.1f} s")
        # The agent's packages (Burst's shim among them) after the environment's own.
        agent_site = sysconfig.get_paths()["purelib"]
        _add_files(site, {"zz-burst-agent.pth":
                          f"import site; site.addsitedir({agent_site!r})\n".encode()},
                   "the agent's packages", confined, say)
        if confined is not None:
            confined.take_back()
        ready = tmp / ".burst-ready"
        if os.path.lexists(ready):
            os.unlink(ready)
        fd = os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write("ok\n")
        for dirpath, dirnames, _ in os.walk(tmp):
            for n in dirnames:
                path = os.path.join(dirpath, n)
                if not os.path.islink(path):
                    os.chmod(path, 0o755)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
        say(f"virtual environment ready in {time.monotonic() - build_start:.1f} s: {root}")
    finally:
        for d in (tmp, scratch):
            shutil.rmtree(d, ignore_errors=True)


def _add_files(dest: Path, files: dict[str, bytes], what: str, confined: _Confined | None,
               say: Callable[[str], None]) -> None:
    """Write ``files`` (relative paths) under ``dest``; confined, as the sandbox uid (the
    tree was written by the user's installs: root never follows a link in it)."""
    for rel in files:
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise ImageError(f"image build failed at {what}: {rel!r} is not a relative path "
                             "inside the package (no '..', not absolute)")
    if confined is None:
        for rel, data in files.items():
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return
    staging = confined.scratch / "files"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, data in files.items():
        p = staging / rel
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        p.write_bytes(data)
    for dirpath, _, names in os.walk(staging):
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)
    confined.run(["/bin/sh", "-c", 'mkdir -p "$2" && cp -R "$1/." "$2/"', "sh",
                  str(staging), str(dest)], say, what)
    shutil.rmtree(staging, ignore_errors=True)


class _Confined:
    """Build steps in the containers' sandbox (``Sandbox.command``) as the sandbox uid,
    with only the build dir writable."""

    def __init__(self, box: Sandbox, tmp: Path, scratch: Path,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.box, self.tmp, self.scratch, self.loop = box, tmp, scratch, loop
        #: The machine's pip settings (its config files are the agent's, e.g. in /root:
        #: not in the sandbox) as ``PIP_*`` variables, and the local dirs they name.
        self.pip_env, self.readable = pip_settings()

    def allow_links(self, step: wire.ImageStep, what: str) -> None:
        """A step's ``find_links=`` dirs on the agent's machine, readable (as the sandbox
        uid: only what any user may read) by its build; never Burst's state."""
        home = os.path.realpath(self.box.home)
        for loc in step.find_links.split():
            path = loc[7:] if loc.startswith("file://") else loc
            if not os.path.isabs(path):
                continue
            real = os.path.realpath(path)
            if real == "/" or real == home or real.startswith(home + os.sep):
                raise ImageError(f"image build failed at {what}: find_links={loc!r} is not "
                                 "allowed (the machine's root or Burst's state); use a "
                                 "directory of packages")
            if os.path.exists(real):
                self.readable.append(real)

    def hand_over(self) -> None:
        """The scratch dirs (a private /tmp, an empty bundle) and the build dir, to the
        sandbox uid (the build dir holds only what the agent's ``venv`` made so far)."""
        self.scratch.mkdir(mode=0o755)
        os.chmod(self.scratch, 0o755)
        for d in ("bundle", "sock"):
            (self.scratch / d).mkdir(mode=0o755)
        self.box.private_dir(self.scratch / "private")
        _chown_tree(self.tmp, self.box.uid, self.box.gid)

    def take_back(self) -> None:
        _chown_tree(self.tmp, 0, 0)

    def run(self, argv: list[str], say: Callable[[str], None], what: str,
            env: dict[str, str] | None = None) -> None:
        box = self.box
        networked = box.networked(False) and self.loop is not None
        mounts = [(Path(p), p, True) for p in dict.fromkeys(self.readable)]
        mounts.append((self.tmp, str(self.tmp), False))
        if (self.scratch / "files").is_dir():
            mounts.append((self.scratch / "files", str(self.scratch / "files"), True))
        cmd, args_fd = hide_args(box.command(
            argv, bundle_dir=self.scratch / "bundle", socket_path=None,
            socket_dir=self.scratch / "sock", private_dir=self.scratch / "private",
            gpu_indices=[], networked=networked, cwd=PRIVATE, mounts=mounts))
        gate_r = gate_w = -1
        if networked:  # held behind a gate until its network is set up (as a container)
            gate_r, gate_w = os.pipe()
            cut = cmd.index("--") + 1
            cmd[cut:cut] = ["/bin/sh", "-c", 'read -r _ || exit 111; exec "$@" </dev/null',
                            "sh"]
        # The machine's pip settings (and the agent's), Burst's path; then the step's own.
        passed = {k: v for k, v in os.environ.items()
                  if k.startswith(("PIP_", "UV_")) or k in (
                      "PATH", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                      "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                      "NO_PROXY")}
        full = {**passed, **self.pip_env, **interpreter_env(), "HOME": PRIVATE,
                "TMPDIR": PRIVATE, "PIP_NO_CACHE_DIR": "1", **(env or {})}
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=gate_r if networked else subprocess.DEVNULL,
                                    env=full, text=True, errors="replace",
                                    start_new_session=True, pass_fds=[args_fd])
        finally:
            os.close(args_fd)
            if gate_r >= 0:
                os.close(gate_r)
        try:
            if networked:
                assert box.network is not None and self.loop is not None
                future = asyncio.run_coroutine_threadsafe(
                    box.network.attach(proc.pid, cast(Any, rootfs._Waiter(proc))), self.loop)
                future.result(timeout=box.network.setup_timeout + 5)
                os.write(gate_w, b"go\n")
            out, _ = proc.communicate(timeout=900)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            if gate_w >= 0:
                os.close(gate_w)
        _report(out.splitlines(), proc.returncode, say, what)


def pip_settings() -> tuple[dict[str, str], list[str]]:
    """The machine's pip configuration (``pip config list``: its files and ``PIP_*``
    variables) as ``PIP_*`` variables, and the local paths it names (a ``file://`` index's
    directory, find-links dirs, the CA bundle) that exist, for a confined build to read."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=120).stdout
    cfg: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        scope, _, key = name.partition(".")
        if not key:
            continue
        value = value.strip().strip("'\"").replace("\\n", " ")
        (from_env if scope == ":env:" else cfg)[key] = value
    cfg.update(from_env)  # PIP_* variables win over the files, as in pip
    env = {"PIP_" + k.upper().replace("-", "_"): v for k, v in cfg.items()}
    paths: list[str] = []
    for key in ("index-url", "extra-index-url", "find-links", "cert", "client-cert",
                "constraint"):
        for loc in cfg.get(key, "").split():
            path = loc[7:] if loc.startswith("file://") else loc
            if os.path.isabs(path) and os.path.exists(path):
                path = os.path.realpath(path)
                # A local index's pages link to its files beside them (simple/ and files/).
                paths.append(os.path.dirname(path) if key.endswith("index-url") else path)
    return env, paths


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """``chown -R`` that never follows a link (the tree may hold the user's links)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def uv_binary(say: Callable[[str], None]) -> tuple[str, dict[str, str]]:
    """uv (installed from the package index once per machine, beside the environments)
    and the machine's pip configuration as uv's settings (``images.UV_SETTINGS``)."""
    root = images.cache_dir("uv")
    uv = root / "bin" / "uv"
    if not uv.exists():
        tmp = root.with_name(f"uv.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "pip", "install", "-q", "--no-input",
                  "--disable-pip-version-check", "--target", str(tmp), "uv"], say,
                 "installing uv (for uv_pip_install)")
            with contextlib.suppress(OSError):  # another agent finished first: keep its copy
                os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", images.UV_SETTINGS, "json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return str(uv), dict(json.loads(out))


def _run(argv: list[str], say: Callable[[str], None], what: str,
         env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env} if env else None)
    _report((proc.stdout + proc.stderr).splitlines(), proc.returncode, say, what)


def _report(out: list[str], code: int, say: Callable[[str], None], what: str) -> None:
    for line in out:
        if line.strip():
            say(line)
    if code != 0:
        last = next((ln for ln in reversed(out) if ln.strip()), f"exit code {code}")
        raise ImageError(f"image build failed at {what}: {last}\n" + "\n".join(out[-30:]))


def _log_failure(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("image_evict_failed", error=repr(task.exception()))


def _image_words(image: wire.ImageSpec) -> str:
    steps = [describe(s) for s in image.steps if s.kind not in rootfs.FAST_STEPS]
    base = (f"Image.from_registry({image.registry_tag!r})" if image.base == "registry"
            else f"Image.debian_slim(python_version={image.python_version!r})")
    return f"{base}{''.join('.' + s for s in steps)}"


class _Released:
    """A container handle that tells the store its image is free once the container ends."""

    def __init__(self, handle: ContainerHandle, done: Callable[[], None]) -> None:
        self._handle = handle
        self._done: Callable[[], None] | None = done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    async def wait(self) -> int:
        try:
            return await self._handle.wait()
        finally:
            if self._done is not None:
                done, self._done = self._done, None
                done()
