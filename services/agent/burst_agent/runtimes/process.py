"""The process runtime: a subprocess per container.

It runs the shim inside the agent's sandbox
(``sandbox.py``: bubblewrap, cgroup limits, a non-root uid) when one is available.

With the zygote (``zygote.py``) a container is a fork of a warm interpreter, entering a
sandbox bwrap made around a holder. The runtime keeps one such sandbox made ahead of time,
a *spare* (no GPUs, its own private dir, an empty bundle dir and socket dir): the next
container without GPUs whose bundle is small takes it (its bundle and socket are linked
in, its cgroups made), so bwrap's setup is not on its start; another spare is made behind.

An image's spare (a root filesystem, ``rootfs.py``) goes further (``spare_python``): the
zygote's fork, in a cgroup of its own (``spare_memory_mb``), drops to the sandbox uid and
execs the image's own python (``burst._shim.spare``), which imports the shim and the
image's ``Image.imports()``, checks CUDA is not initialised and waits on a socket. A
container taking it sets its cgroup limits on the spare's cgroup (from outside; renamed
after the container), links its bundle and socket in, and only then sends its environment
(secrets, ids) and working directory: the same process serves it. Not for an image with an
``entrypoint`` (it runs with the container's environment) nor containers with volumes.

An image's containers with GPUs get such spares too, one per GPU set (its device nodes and
the driver's files bound, ``CUDA_VISIBLE_DEVICES`` set), made after the set's first use:
at most ``gpu_spares`` sets per image (the least recently used gives way), each closed
after ``gpu_spare_idle`` seconds without a container of its set.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from burst_agent.runtimes import sandbox as sb
from burst_agent.runtimes import zygote as zyg
from burst_agent.runtimes.base import ContainerSpec
from burst_core import logs

if TYPE_CHECKING:
    from burst_agent.runtimes import rootfs

log = logs.get("burst.agent.runtime")


class ProcessHandle:
    def __init__(self, proc: asyncio.subprocess.Process, cgroup: sb.Cgroup | None = None,
                 private_dir: Path | None = None) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.cgroup = cgroup
        self.private_dir = private_dir
        self._reason = ""
        self._cleaned = False
        #: A zygote-forked container's host pid (not a descendant of ``proc``).
        self.child_pid: int | None = None
        #: Removed with the private dir (a spare sandbox's socket dir).
        self.also_remove: Path | None = None
        #: Sandboxed as root: the command prefix that drops to the sandbox's uid.
        self.drop: list[str] = []

    async def wait(self) -> int:
        code = await self.proc.wait()
        if not self._cleaned:
            self._cleaned = True
            await asyncio.to_thread(self._cleanup, code)
        return code

    def _cleanup(self, code: int) -> None:
        if self.cgroup is not None:
            # The OOM killer's SIGKILL hits the shim inside the sandbox; bwrap then exits
            # with a code of its own, so look at the cgroup rather than at the code alone.
            if self.cgroup.oom_killed() or (code in (-9, 137) and self.cgroup.at_limit()):
                self._reason = f"out of memory (limit {self.cgroup.memory_limit_mb} MiB)"
            self.cgroup.remove()
        for path in (self.private_dir, self.also_remove):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def exit_reason(self) -> str:
        return self._reason

    def inner_pid(self) -> int | None:
        """A process inside the container (its namespaces, its root): the zygote's fork,
        else the first process under bwrap that is not bwrap itself, else the shim."""
        if self.child_pid is not None:
            return self.child_pid
        if self.private_dir is None:  # not sandboxed: the shim itself
            return self.proc.pid
        for pid in _descendants(self.proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "bwrap":
                    return pid
            except OSError:
                continue
        return None

    def exec_command(self, argv: list[str], env: dict[str, str],
                     ) -> tuple[list[str], dict[str, str], str | None, Callable[[], None] | None]:
        """How to run ``argv`` inside this container (``burst container exec``): the host
        command line, its environment (the container's), working directory and pre-exec
        hook. ``env``: the container's own variables (its image's, its secrets), over what
        its process started with (a zygote's fork set them after it started). Sandboxed,
        it enters the container's namespaces (``nsenter``: mount, UTS,
        IPC, network, pid, its root and working directory), joins its cgroups and drops
        to its uid as the shim did."""
        pid = self.inner_pid()
        if pid is None:
            raise RuntimeError("the container's process is gone")
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            started = dict(kv.decode(errors="replace").split("=", 1)
                           for kv in raw.split(b"\0") if b"=" in kv)
        except OSError:
            started = {}
        env = {**started, **env}
        if self.private_dir is None:
            return argv, env, os.path.realpath(f"/proc/{pid}/cwd"), None
        env.update(HOME=sb.PRIVATE, TMPDIR=sb.PRIVATE)
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise RuntimeError("nsenter (util-linux) is not installed on the agent's machine")
        tasks = self.cgroup.tasks_files() if self.cgroup is not None else []

        def join() -> None:
            for f in tasks:
                with open(f, "w") as fh:
                    fh.write("0")

        host = [nsenter, "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                *self.drop, *argv]
        return host, env, None, join

    def pids(self) -> list[int]:
        """The container's processes (host pids): its memory cgroup's, else its tree."""
        if self.cgroup is not None:
            try:
                return [int(x) for x in (self.cgroup.dirs["memory"] / "cgroup.procs")
                        .read_text().split()]
            except (OSError, ValueError, KeyError):
                pass
        root = self.child_pid or self.proc.pid
        return [root, *_descendants(root)]

    def usage(self) -> tuple[float, float] | None:
        """(CPU seconds used so far, memory in bytes now) of the container's processes."""
        from burst_agent.figures import cpu_seconds

        pids = self.pids()
        if self.cgroup is not None:
            try:
                mem = float((self.cgroup.dirs["memory"] / "memory.usage_in_bytes").read_text())
                return cpu_seconds(pids), mem
            except (OSError, ValueError, KeyError):
                pass
        rss = 0.0
        for pid in pids:
            try:
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
                    "SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
        return cpu_seconds(pids), rss

    def signal(self, sig: int) -> None:
        if self.child_pid is not None and self.private_dir is None:
            # An unsandboxed zygote fork: its own session, signalled as a group (as a
            # fresh interpreter's); its holder follows it when it exits.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child_pid, sig)
            if sig == signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
            return
        if self.child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child_pid, sig)
            if sig != signal.SIGKILL:
                return
        elif sig != signal.SIGKILL and self.private_dir is not None:
            # Sandboxed: a SIGTERM to bwrap would end the pid namespace at once (its init
            # dies, the kernel kills the rest), so the shim never ran @exit. Signal the
            # processes under bwrap instead, and let bwrap exit when they are gone.
            for pid in _descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            return
        with contextlib.suppress(ProcessLookupError):
            # The container is its own process group: signal everything it started.
            os.killpg(self.proc.pid, sig)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc's children lists), deepest last."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            continue
        out += kids
        todo += kids
    return out


class ProcessRuntime:
    """A subprocess per container, inside the sandbox when the agent has one."""

    name = "process"

    def __init__(self, python: str = "", sandbox: sb.Sandbox | None = None,
                 state_dir: Path | None = None, zygote: bool = False,
                 spares: bool = True, spare_delay: float = 0.0,
                 view: rootfs.View | None = None,
                 zygote_imports: list[str] | None = None,
                 zygote_unsandboxed: bool = False, venv: str = "",
                 spare_python: bool = True, spare_timeout: float = 120.0,
                 spare_memory_mb: int = 1024, gpu_spares: int = 2,
                 gpu_spare_idle: float = 600.0) -> None:
        #: An image's root filesystem (``rootfs.py``): containers run in it, with its
        #: python and environment, instead of the agent's.
        self.view = view
        self.python = view.python if view is not None else (python or sys.executable)
        #: The image's virtual environment ``python`` belongs to (``venvs.py``), if any.
        self.venv = venv
        self.sandbox = sandbox
        self.state_dir = state_dir
        #: Modules the zygote imports before forking (``BURST_ZYGOTE_IMPORTS``).
        self.zygote_imports = list(zygote_imports or [])
        # The zygote forks into a sandbox bwrap built (setns): that takes root. Without a
        # sandbox (``zygote_unsandboxed``) it forks plain processes of the agent's uid.
        # (An image's container execs its interpreter, under its entrypoint, from the fork.)
        plain = zygote and zygote_unsandboxed and not self.sandboxed and view is None
        ld = os.environ.get("LD_LIBRARY_PATH")  # the host's (GPU driver) libraries
        self.zygote = (zyg.Zygote(self.python, imports=self.zygote_imports,
                                  extra_env={"LD_LIBRARY_PATH": ld} if ld else None)
                       if plain else
                       self._make_zygote() if zygote and self.sandboxed
                       and os.geteuid() == 0 else None)
        self._warming: asyncio.Task[None] | None = None
        #: The sandbox made ahead for the next container (see the module docstring).
        self._spare: _Holder | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._spares = spares and self.zygote is not None and state_dir is not None
        self.spare_bundle_files = SPARE_BUNDLE_FILES
        #: Seconds between taking the spare and making the next (see AgentSettings).
        self.spare_delay = spare_delay
        #: An image's spare runs its python ahead (see the module docstring); it may take
        #: ``spare_timeout`` seconds to say ready, in a cgroup of ``spare_memory_mb`` MiB.
        self.spare_python = spare_python and view is not None and not view.entrypoint
        self.spare_timeout = spare_timeout
        self.spare_memory_mb = spare_memory_mb
        #: What the image declares it imports (``Image.imports()``): its spare imports them.
        self.spare_imports: list[str] = []
        #: An image's spares per GPU set (see the module docstring): the sets' spares, the
        #: spares being made, when each set was last used, sets whose spare failed.
        self.gpu_spares = gpu_spares
        self.gpu_spare_idle = gpu_spare_idle
        self._gpu_spares: dict[tuple[int, ...], _Holder] = {}
        self._gpu_tasks: dict[tuple[int, ...], asyncio.Task[None]] = {}
        self._gpu_used: dict[tuple[int, ...], float] = {}
        self._gpu_failed: set[tuple[int, ...]] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        if self._spares:  # an agent that stops leaves no spare behind
            atexit.register(self.close)
        if self.zygote is not None:
            # Made by a running agent: warm the zygote now, so that the first container
            # is a fork too (its import is a fresh interpreter's cost, paid once).
            with contextlib.suppress(RuntimeError):  # no running loop: warmed on first use
                self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        assert self.zygote is not None
        try:
            await self.zygote.ensure()
        except Exception as e:  # the first start tries again, and falls back if need be
            log.warning("zygote_warmup_failed", error=repr(e))
        self._refill()

    def _image_env(self, gpu_indices: list[int]) -> dict[str, str]:
        if self.view is not None:
            # The image's own environment; its modules after the bundle (as on Docker).
            image_env = dict(self.view.env)
            image_env["PYTHONPATH"] = f"{sb.BUNDLE}:{image_env.get('PYTHONPATH', '')}"
            if gpu_indices:  # the host's GPU driver, bound in (``Sandbox.command``)
                image_env["LD_LIBRARY_PATH"] = ":".join(
                    p for p in (sb.GPU_DRIVER_DIR, image_env.get("LD_LIBRARY_PATH")) if p)
                image_env["PATH"] = f"{image_env.get('PATH', '/usr/bin:/bin')}:" \
                                    f"{sb.GPU_DRIVER_DIR}/bin"
        else:
            image_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                         "LANG": os.environ.get("LANG", "C.UTF-8"), **sb.interpreter_env()}
        return image_env

    def _spare_env(self, gpus: tuple[int, ...] = ()) -> dict[str, str]:
        """An image's spare python's environment: the image's (and its GPU set's), nothing
        of a container."""
        return {**self._image_env(list(gpus)), "HOME": sb.PRIVATE, "TMPDIR": sb.PRIVATE,
                "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus),
                "BURST_SPARE_SANDBOX": "1",
                "BURST_SPARE_IMPORTS": ",".join(self.spare_imports),
                # Room for the container's environment in /proc/<pid>/environ.
                "BURST_SPARE_PAD": "x" * SPARE_ENV_PAD}

    def _env(self, spec: ContainerSpec, home: str, bundle: str, sock: str) -> dict[str, str]:
        image_env = self._image_env(spec.gpu_indices)
        return {
            **image_env,
            "HOME": home,
            "TMPDIR": home if self.sandboxed else os.environ.get("TMPDIR", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "BURST_SHIM_SOCKET": sock,
            "BURST_SHIM_MODULE": spec.module,
            "BURST_SHIM_QUALNAME": spec.qualname,
            "BURST_CONTAINER_ID": spec.container_id,
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
            **spec.env,
        }

    async def want_imports(self, names: list[str]) -> None:
        """Modules a function's image declares (``Image.imports()``): an unsandboxed zygote
        (the agent's uid, as its containers) imports them before forking, restarted with
        them once when they are new; returns once it has (a deployment's image is ready
        then). A sandboxed zygote is root outside the sandbox: it imports only the
        operator's ``BURST_ZYGOTE_IMPORTS``, never what a user names."""
        if self.zygote is None or self.sandboxed:
            return
        new = [n for n in names if n not in self.zygote_imports
               and all(part.isidentifier() for part in n.split("."))]
        if not new:
            return
        self.zygote_imports += new
        self.zygote.imports = list(self.zygote_imports)
        self.zygote.close()
        log.info("zygote_imports", python=self.python, imports=self.zygote_imports)
        await self._warm()

    def _make_zygote(self) -> zyg.Zygote:
        """A sandboxed agent's zygote: root outside the sandbox, so always the agent's own
        interpreter. For an image's virtual environment it starts isolated (``-I -S``: no
        site processing of the environment's packages) and each container enters the
        environment once it is in its sandbox, as the sandbox uid; for an image's root
        filesystem each container execs the image's interpreter there (``_exec_argv``)."""
        if self.view is None and not self.venv:
            return zyg.Zygote(self.python, imports=self.zygote_imports)
        return zyg.Zygote(sys.executable, isolated=True, venv=self.venv)

    def _exec_argv(self) -> list[str] | None:
        """What a zygote's container of an image's root filesystem execs in its sandbox."""
        if self.view is None:
            return None
        return [*self.view.entrypoint, self.view.python, "-m", "burst._shim"]

    def _rootfs(self) -> tuple[Path, Path] | None:
        return (self.view.root, self.view.shim) if self.view is not None else None

    def _cwd(self) -> str:
        return (self.view.workdir if self.view is not None and self.view.workdir != "/"
                else sb.BUNDLE)

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None and self.sandbox.enabled

    async def start(self, spec: ContainerSpec) -> ProcessHandle:
        if spec.mounts and not self.sandboxed:
            raise RuntimeError("volumes need a sandboxed container (bubblewrap) or the "
                               "Docker runtime; this agent runs plain processes "
                               "(BURST_SANDBOX=off or bubblewrap missing)")
        if not self.sandboxed and self.zygote is not None:
            try:
                return await self._fork_plain(spec)
            except zyg.ZygoteError as e:  # a fresh interpreter still starts the container
                log.warning("zygote_failed", container_id=spec.container_id, error=str(e))
        if not self.sandboxed:
            env = self._env(spec, str(spec.bundle_dir), str(spec.bundle_dir), str(spec.socket_path))
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "burst._shim",
                cwd=str(spec.bundle_dir), env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=sb.die_with_parent,
            )
            return ProcessHandle(proc)
        assert self.sandbox is not None
        box = self.sandbox
        box.socket_ready(spec.socket_path)
        # A spare sandbox was made before the mounts were known: only without volumes.
        spare = (self._take_spare(spec) if self.zygote is not None and not spec.mounts
                 else None)
        if spare is not None and spare.ctl is not None:
            try:
                return await self._claim(spare, spec)
            except (zyg.ZygoteError, OSError) as e:  # a sandbox of its own still starts it
                log.warning("spare_python_failed", container_id=spec.container_id,
                            error=repr(e))
                await self._drop_spare(spare)
            spare = None
        if spare is not None:
            cgroup = box.prepare(spec.container_id, None, spec.cpu,
                                 spec.memory_limit_mb or spec.memory_mb, spec.cpu_limit)
            entered = False
            try:
                handle = await self._enter(spare, spec, box, cgroup,
                                           sb.SOCKET_DIR + "/shim.sock")
                entered = True
                return handle
            except zyg.ZygoteError as e:  # a sandbox of its own still starts it
                log.warning("spare_sandbox_failed", container_id=spec.container_id,
                            error=str(e))
            finally:
                if not entered:  # no handle cleans up after it
                    if cgroup is not None:
                        cgroup.remove()
                    for path in (spare.remove, spare.sock_dir):
                        if path is not None:
                            shutil.rmtree(path, ignore_errors=True)
        state = self.state_dir or spec.socket_path.parent
        private = state / spec.container_id
        cgroup = box.prepare(spec.container_id, private, spec.cpu,
                             spec.memory_limit_mb or spec.memory_mb, spec.cpu_limit)
        # (An image's container with GPUs: a fresh interpreter, its driver's paths set up
        # by bwrap from its start.)
        if self.zygote is not None and not (self.view is not None and spec.gpu_indices):
            try:
                self._refill(self.spare_delay)
                holder = await self._holder(box, bundle_dir=spec.bundle_dir,
                                            socket_path=spec.socket_path, private=private,
                                            gpu_indices=spec.gpu_indices,
                                            container_id=spec.container_id,
                                            networked=box.networked(spec.block_network),
                                            mounts=spec.mounts)
                return await self._enter(holder, spec, box, cgroup, sb.SOCKET)
            except zyg.ZygoteError as e:  # a fresh interpreter still starts the container
                log.warning("zygote_failed", container_id=spec.container_id, error=str(e))
            except BaseException:
                if cgroup is not None:
                    cgroup.remove()
                shutil.rmtree(private, ignore_errors=True)
                raise
        networked = box.networked(spec.block_network)
        gate_r = gate_w = args_fd = -1
        try:
            env = self._env(spec, sb.PRIVATE, sb.BUNDLE, sb.SOCKET)
            entrypoint = self.view.entrypoint if self.view is not None else []
            argv, args_fd = sb.hide_args(box.command(
                [*entrypoint, self.python, "-m", "burst._shim"], bundle_dir=spec.bundle_dir,
                socket_path=spec.socket_path, private_dir=private,
                gpu_indices=spec.gpu_indices, networked=networked, rootfs=self._rootfs(),
                cwd=self._cwd(), mounts=spec.mounts))
            if networked:
                # bwrap waits behind a gate (after ``unshare --net``) until the agent has
                # set up the namespace.
                gate_r, gate_w = os.pipe()
                cut = argv.index("--") + 1
                argv[cut:cut] = ["/bin/sh", "-c",
                                 'read -r _ || exit 111; exec "$@" </dev/null', "sh"]
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env,
                stdin=gate_r if networked else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, preexec_fn=box.preexec(cgroup), pass_fds=[args_fd],
            )
            if networked:
                os.close(gate_r)
                gate_r = -1
                try:
                    assert box.network is not None
                    await box.network.attach(proc.pid, proc)
                    os.write(gate_w, b"go\n")
                except BaseException:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
                    raise
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(private, ignore_errors=True)
            raise
        finally:
            for fd in (gate_r, gate_w, args_fd):
                if fd >= 0:
                    os.close(fd)
        handle = ProcessHandle(proc, cgroup, private)
        handle.drop = box._drop()
        return handle


    async def _fork_plain(self, spec: ContainerSpec) -> ProcessHandle:
        """An unsandboxed container forked by the zygote: a holder (``sh``, the agent's
        child, exiting with the container's code) and the fork, in a session of its own."""
        assert self.zygote is not None
        out_r, out_w = socket.socketpair()
        err_r, err_w = socket.socketpair()
        exit_r, exit_w = os.pipe()
        keeper: zyg.Keeper | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *zyg.HOLDER, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                  "BURST_CONTAINER_ID": spec.container_id},
                stdin=exit_r, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
            keeper = await self.zygote.prefork(out_fd=out_w.fileno(), err_fd=err_w.fileno(),
                                               exit_fd=exit_w)
            for fd in (out_w, err_w):
                fd.close()
            os.close(exit_w)
            exit_w = -1
            pid = await keeper.fork(0)
            bundle = str(spec.bundle_dir)
            await keeper.go(cwd=bundle, env=self._env(spec, bundle, bundle,
                                                      str(spec.socket_path)),
                            uid=os.getuid(), gid=os.getgid(), cgroup_tasks=[])
        except BaseException:
            for sock in (out_r, out_w, err_r, err_w):
                sock.close()
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            raise
        finally:
            os.close(exit_r)
            if exit_w >= 0:
                os.close(exit_w)
            if keeper is not None:
                keeper.close()
        handle = ProcessHandle(proc)
        handle.pid = handle.child_pid = pid
        handle.stdout = await zyg.socket_reader(out_r)
        handle.stderr = await zyg.socket_reader(err_r)
        log.info("container_forked", container_id=spec.container_id, sandboxed=False)
        return handle

    async def _holder(self, box: sb.Sandbox, *, bundle_dir: Path, private: Path,
                      gpu_indices: list[int], container_id: str = "",
                      socket_path: Path | None = None, socket_dir: Path | None = None,
                      networked: bool = False,
                      mounts: list[tuple[Path, str, bool]] | None = None) -> _Holder:
        """bwrap around a holder: the sandbox the zygote forks a container into. Returns
        once bwrap runs; its ``info`` (the sandbox's host pid) and ``up`` (the holder's
        line, once the mounts are in place) come later."""
        # What the agent reads are socketpairs, not pipes: a socket handed to the loop is
        # owned by its transport under asyncio and uvloop alike (a pipe's file object is
        # not, under uvloop, and closing it twice closes some other fd).
        out_r, out_w = socket.socketpair()
        err_r, err_w = socket.socketpair()
        ready_r, ready_w = socket.socketpair()
        info_r, info_w = socket.socketpair()
        exit_r, exit_w = os.pipe()  # the holder's stdin: never read by the agent
        args_fd = -1
        try:
            argv, args_fd = sb.hide_args(box.command(
                zyg.HOLDER, bundle_dir=bundle_dir, socket_path=socket_path,
                socket_dir=socket_dir, private_dir=private, gpu_indices=gpu_indices,
                networked=networked, extra=["--info-fd", str(info_w.fileno())],
                rootfs=self._rootfs(), cwd=self._cwd(), mounts=mounts))
            proc = await asyncio.create_subprocess_exec(
                # The id marks the holder as the container's, on the host (ps e, /proc);
                # a spare's holder is marked as one.
                *argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                            **({"BURST_CONTAINER_ID": container_id} if container_id
                               else {"BURST_SPARE_SANDBOX": "1"})},
                # No preexec_fn (it forces a full fork of the agent; without it the
                # child is spawned with vfork): the holder and bwrap need no cgroup, the
                # container joins its own before anything of it runs.
                stdin=exit_r, stdout=ready_w.fileno(), stderr=err_w.fileno(),
                pass_fds=[info_w.fileno(), args_fd], start_new_session=True)
        except BaseException:
            for sock in (out_r, out_w, err_r, err_w, ready_r, info_r):
                sock.close()
            os.close(exit_w)
            raise
        finally:
            os.close(exit_r)
            ready_w.close()
            info_w.close()
            if args_fd >= 0:
                os.close(args_fd)
        info = asyncio.ensure_future(zyg.read_until(info_r, zyg.is_json))
        net = None
        if networked:
            assert box.network is not None
            network = box.network

            async def setup() -> None:
                # The sandbox's pid, once bwrap names it, is in the namespace (unshare ran).
                await network.attach(zyg.info_pid(await asyncio.shield(info)), proc)

            net = asyncio.ensure_future(setup())
        return _Holder(
            proc=proc, out_r=out_r, out_w=out_w, err_r=err_r, err_w=err_w, exit_w=exit_w,
            info=info,
            up=asyncio.ensure_future(zyg.read_until(ready_r, lambda b: b.endswith(b"\n"))),
            remove=private, t0=time.perf_counter(), net=net)

    async def _fork_into(self, holder: _Holder, ctl_fd: int = -1) -> None:
        """A keeper for ``holder``'s sandbox, which forks the container into its pid
        namespace as soon as bwrap names it; the container waits for :meth:`_enter`."""
        assert self.zygote is not None
        holder.keeper = await self.zygote.prefork(
            out_fd=holder.out_w.fileno(), err_fd=holder.err_w.fileno(), exit_fd=holder.exit_w,
            ctl_fd=ctl_fd)
        holder.release()  # the keeper has its own copies
        holder.pid = await holder.keeper.fork(zyg.info_pid(await holder.info))

    async def _enter(self, holder: _Holder, spec: ContainerSpec, box: sb.Sandbox,
                     cgroup: sb.Cgroup | None, socket_inside: str) -> ProcessHandle:
        """The container, forked by the zygote into ``holder``'s sandbox (while bwrap sets
        it up, or already), enters it once it is up: it joins its cgroups, then the rest of
        the sandbox, and runs the shim."""
        t_up = t_go = time.perf_counter()
        try:
            if holder.keeper is None:
                await self._fork_into(holder)
            assert holder.keeper is not None
            if not await holder.up:
                raise zyg.ZygoteError("the sandbox did not come up (bwrap failed)")
            if holder.net is not None:  # deny rules and NAT in place before any user code
                await holder.net
            t_up = time.perf_counter()
            await holder.keeper.go(
                cwd=self._cwd(), env=self._env(spec, sb.PRIVATE, sb.BUNDLE, socket_inside),
                uid=box.uid, gid=box.gid, cgroup_tasks=cgroup.tasks_files() if cgroup else [],
                exec_argv=self._exec_argv())
            t_go = time.perf_counter()
            handle = ProcessHandle(holder.proc, cgroup, holder.remove)
            handle.drop = box._drop()
            handle.pid = handle.child_pid = holder.pid
            handle.also_remove = holder.sock_dir
            handle.stdout = await zyg.socket_reader(holder.out_r)
            handle.stderr = await zyg.socket_reader(holder.err_r)
        except BaseException:
            await holder.kill()
            raise
        finally:
            holder.release()  # the container has its own copies now
            if holder.keeper is not None:
                holder.keeper.close()  # (without go it kills what it forked and exits)
        log.info("container_forked", container_id=spec.container_id, spare=holder.spare,
                 sandbox_ms=round((t_up - holder.t0) * 1000, 1),
                 fork_ms=round((t_go - t_up) * 1000, 1))
        return handle

    async def _claim(self, spare: _Holder, spec: ContainerSpec) -> ProcessHandle:
        """An image's spare python, already running in its sandbox and cgroup (its limits
        set and its bundle and socket linked in by :meth:`_take_spare`), told who its
        container is: its environment (secrets, ids) and working directory."""
        assert self.sandbox is not None and spare.ctl is not None
        env = self._env(spec, sb.PRIVATE, sb.BUNDLE, sb.SOCKET_DIR + "/shim.sock")
        loop = asyncio.get_running_loop()
        ctl, spare.ctl = spare.ctl, None
        try:
            await loop.sock_sendall(ctl, json.dumps({"env": env, "cwd": self._cwd()}).encode()
                                    + b"\n")
        finally:
            ctl.close()
        handle = ProcessHandle(spare.proc, spare.cgroup, spare.remove)
        handle.drop = self.sandbox._drop()
        handle.pid = handle.child_pid = spare.pid
        handle.also_remove = spare.sock_dir
        handle.stdout = await zyg.socket_reader(spare.out_r)
        handle.stderr = await zyg.socket_reader(spare.err_r)
        log.info("container_forked", container_id=spec.container_id, spare=True,
                 spare_python=True, gpus=list(spec.gpu_indices),
                 claim_ms=round((time.perf_counter() - spare.t0) * 1000, 1))
        return handle

    async def _drop_spare(self, spare: _Holder) -> None:
        """A spare that could not be used: killed, its cgroup and dirs removed."""
        await spare.kill()
        spare.release()
        if spare.cgroup is not None:
            await asyncio.to_thread(spare.cgroup.remove)
        for path in (spare.remove, spare.sock_dir):
            if path is not None:
                await asyncio.to_thread(shutil.rmtree, path, True)

    def spare_pids(self) -> list[int]:
        """A process inside each ready spare sandbox (its pid 1)."""
        out = []
        for spare in [self._spare, *self._gpu_spares.values()]:
            if spare is None or not spare.info.done() or spare.info.cancelled():
                continue
            with contextlib.suppress(Exception):
                out.append(zyg.info_pid(spare.info.result()))
        return out

    def want_spare_imports(self, names: list[str]) -> None:
        """Modules an image declares (``Image.imports()``): its spare python imports them
        (as the sandbox uid, in its sandbox); a spare made without them is replaced."""
        new = [n for n in names if n not in self.spare_imports
               and all(part.isidentifier() for part in n.split("."))]
        if not new:
            return
        self.spare_imports += new
        spare, self._spare = self._spare, None
        if spare is not None:
            self._discard(spare)
        for gpus in list(self._gpu_spares):
            self._discard(self._gpu_spares.pop(gpus))
            self._refill(0.0, gpus)
        self._refill()

    # ---- the spare sandbox ---------------------------------------------------------
    def _take_spare(self, spec: ContainerSpec) -> _Holder | None:
        """The spare, made ready for ``spec`` (its bundle and socket linked in), if it
        fits: a bundle of at most ``spare_bundle_files`` files; with GPUs, an image's spare
        of that GPU set (made after the set's first use)."""
        gpus = tuple(spec.gpu_indices)
        if gpus and not self._gpu_spare_ok():
            return None
        if gpus:
            self._gpu_used[gpus] = time.monotonic()
        spare = self._gpu_spares.get(gpus) if gpus else self._spare
        if spare is not None and spare.proc.returncode is not None:  # it died: another
            self._set_slot(gpus, None)
            self._discard(spare)
            self._refill(0.0, gpus)
            return None
        if spare is None and gpus:
            self._refill(self.spare_delay, gpus)  # the set's first use: a spare behind it
        # A spare is networked where the agent gives containers a network.
        if spare is None or (
                spec.block_network and self.sandbox is not None
                and self.sandbox.networked(False)):
            return None
        self._set_slot(gpus, None)
        root = spare.remove
        if spare.ctl is not None and spare.cgroup is not None:
            # The container's limits on the spare python's cgroup, named after it, before
            # anything of the container reaches the spare.
            assert self.sandbox is not None
            box = self.sandbox
            try:
                spare.cgroup.set_limits(spec.cpu, spec.cpu_limit or spec.cpu + box.cpu_headroom,
                                        spec.memory_limit_mb or spec.memory_mb, box.pids_limit)
            except OSError as e:  # (its memory above the container's limit, say)
                log.warning("spare_python_unfit", container_id=spec.container_id,
                            error=repr(e))
                self._discard(spare)
                self._refill(0.0, gpus)
                return None
            spare.cgroup.rename(spec.container_id)
        try:
            assert spare.sock_dir is not None
            _link_tree(spec.bundle_dir, root / "bundle", self.spare_bundle_files)
            os.link(spec.socket_path, spare.sock_dir / "shim.sock")
        except _TooBig:
            if spare.ctl is not None and spare.cgroup is not None:  # a spare's again
                assert self.sandbox is not None
                with contextlib.suppress(OSError):
                    spare.cgroup.rename(root.name)
                    spare.cgroup.set_limits(SPARE_CPU, SPARE_CPU + self.sandbox.cpu_headroom,
                                            self.spare_memory_mb, self.sandbox.pids_limit)
            # Emptied (the directory itself stays: the sandbox binds it) for the next one.
            for entry in (root / "bundle").iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            self._set_slot(gpus, spare)
            return None
        except OSError as e:
            # Hard links need one filesystem (bundles and state; sockets and the temp
            # dir): where they cannot be made, no spares, rather than one wasted per start.
            log.warning("spare_sandbox_unusable", error=repr(e))
            self._spares = False
            self._discard(spare)
            return None
        spare.t0 = time.perf_counter()
        self._refill(self.spare_delay, gpus)
        return spare

    def _set_slot(self, gpus: tuple[int, ...], spare: _Holder | None) -> None:
        if not gpus:
            self._spare = spare
        elif spare is None:
            self._gpu_spares.pop(gpus, None)
        else:
            self._gpu_spares[gpus] = spare

    def _gpu_spare_ok(self) -> bool:
        return self.spare_python and self.gpu_spares > 0 and self.view is not None

    async def gpu_spare_ready(self, gpus: tuple[int, ...], timeout: float) -> bool:
        """Whether a spare of this GPU set is ready (waiting up to ``timeout`` for one)."""
        deadline = time.monotonic() + timeout
        while gpus not in self._gpu_spares:
            if (not self._spares or gpus in self._gpu_failed
                    or time.monotonic() > deadline):
                return False
            await asyncio.sleep(0.01)
        return True

    def _trim_gpu_spares(self) -> None:
        """At most ``gpu_spares`` GPU sets keep a spare: the least recently used give way."""
        while len(self._gpu_spares) > self.gpu_spares:
            oldest = min(self._gpu_spares, key=lambda g: self._gpu_used.get(g, 0.0))
            log.info("gpu_spare_closed", gpus=list(oldest), why="least recently used set")
            self._discard(self._gpu_spares.pop(oldest))

    def _expire_gpu_spares(self) -> None:
        """GPU sets unused for ``gpu_spare_idle`` seconds: their spares are closed."""
        now = time.monotonic()
        for gpus in list(self._gpu_spares):
            if now - self._gpu_used.get(gpus, 0.0) >= self.gpu_spare_idle:
                log.info("gpu_spare_closed", gpus=list(gpus), why="idle")
                self._discard(self._gpu_spares.pop(gpus))
        if self._gpu_spares:  # look again when the next one may be idle
            next_at = min(self._gpu_used.get(g, 0.0) for g in self._gpu_spares) \
                + self.gpu_spare_idle
            asyncio.get_running_loop().call_later(max(0.05, next_at - now),
                                                  self._expire_gpu_spares)

    async def spare_ready(self, timeout: float) -> bool:
        """Whether a spare sandbox is ready (waiting up to ``timeout`` for one)."""
        deadline = time.monotonic() + timeout
        self._refill()
        while self._spare is None:
            if not self._spares or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _refill(self, delay: float = 0.0, gpus: tuple[int, ...] = ()) -> None:
        """Make the next spare (of the GPU set ``gpus``), in the background (after
        ``delay`` seconds: not while a container is starting), unless one is there or on
        its way."""
        if gpus:
            task = self._gpu_tasks.get(gpus)
            if (not self._spares or not self._gpu_spare_ok() or gpus in self._gpu_spares
                    or gpus in self._gpu_failed or (task is not None and not task.done())):
                return
            with contextlib.suppress(RuntimeError):  # no running loop
                self._gpu_tasks[gpus] = asyncio.get_running_loop().create_task(
                    self._make_spare(delay, gpus))
            return
        if not self._spares or self._spare is not None or (
                self._spare_task is not None and not self._spare_task.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop
            self._spare_task = asyncio.get_running_loop().create_task(self._make_spare(delay))

    async def _make_spare(self, delay: float = 0.0, gpus: tuple[int, ...] = ()) -> None:
        assert self.sandbox is not None and self.state_dir is not None
        if delay > 0:
            await asyncio.sleep(delay)
        name = f"spare-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Private dir and bundle beside the containers' (bundles are linked in from the
        # same filesystem); the socket dir beside the agent's sockets (in the temp dir).
        root = self.state_dir / name
        sock_dir = Path(tempfile.gettempdir()) / f"burst-{name}"
        holder: _Holder | None = None
        python = self.spare_python or bool(gpus)
        ctl_mine = ctl_theirs = None
        try:
            await asyncio.to_thread(_remove_stale_spares, self.state_dir)
            self.sandbox.private_dir(root / "private")
            for d in (root / "bundle", sock_dir):
                d.mkdir(mode=0o755)
                os.chmod(d, 0o755)
            holder = await self._holder(self.sandbox, bundle_dir=root / "bundle",
                                        socket_dir=sock_dir, private=root / "private",
                                        gpu_indices=list(gpus),
                                        networked=self.sandbox.networked(False))
            # The container's handle removes all of it.
            holder.remove, holder.sock_dir, holder.spare = root, sock_dir, True
            if python:
                ctl_mine, ctl_theirs = socket.socketpair()
            await self._fork_into(holder, ctl_theirs.fileno() if ctl_theirs else -1)
            if ctl_theirs is not None:
                ctl_theirs.close()  # the keeper has its own copy
                ctl_theirs = None
            if not await asyncio.wait_for(asyncio.shield(holder.up), 30.0):
                raise zyg.ZygoteError("the sandbox did not come up")
            if holder.net is not None:
                await holder.net
            if python:
                assert ctl_mine is not None
                await self._start_python(holder, name, ctl_mine, gpus)
                ctl_mine = None
        except BaseException as e:
            for sock in (ctl_mine, ctl_theirs):
                if sock is not None:
                    sock.close()
            if holder is not None and holder.ctl is not None:
                holder.ctl.close()
            if holder is not None and holder.cgroup is not None:
                cgroup = holder.cgroup
                holder.cgroup = None
                # (after bwrap is killed below: its processes leave the cgroup then)
                self._later(asyncio.to_thread(cgroup.remove))
            if not isinstance(e, asyncio.CancelledError):  # (cancelled: the runtime closes)
                log.warning("spare_sandbox_failed", error=repr(e), python=python,
                            gpus=list(gpus))
                if gpus:  # that set's containers start as before
                    self._gpu_failed.add(gpus)
                elif python:
                    # Plain spare sandboxes from now on (the image's python starts in each).
                    self.spare_python = False
                    asyncio.get_running_loop().call_soon(self._refill)
                else:
                    # Containers make their own sandboxes, as without spares.
                    self._spares = False
            if holder is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(holder.proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await holder.proc.wait()
                if holder.keeper is not None:
                    holder.keeper.close()
                holder.release()
                for sock in (holder.out_r, holder.err_r):
                    sock.close()
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(sock_dir, ignore_errors=True)
            if isinstance(e, Exception):
                return
            raise
        if gpus:
            self._gpu_spares[gpus] = holder
            self._gpu_used.setdefault(gpus, time.monotonic())
            self._trim_gpu_spares()
            asyncio.get_running_loop().call_later(self.gpu_spare_idle, self._expire_gpu_spares)
        else:
            self._spare = holder
        log.info("spare_sandbox_ready", ms=round((time.perf_counter() - holder.t0) * 1000, 1),
                 python=python, pid=holder.pid, gpus=list(gpus))

    async def _start_python(self, holder: _Holder, name: str, ctl: socket.socket,
                            gpus: tuple[int, ...] = ()) -> None:
        """The image's python in the spare sandbox (``burst._shim.spare``), in a cgroup of
        its own, as the sandbox uid; returns once it says ready."""
        assert self.sandbox is not None and holder.keeper is not None
        assert self.view is not None
        box = self.sandbox
        holder.cgroup = box.prepare(name, None, SPARE_CPU, self.spare_memory_mb)
        await holder.keeper.go(
            cwd=self._cwd(), env=self._spare_env(gpus), uid=box.uid, gid=box.gid,
            cgroup_tasks=holder.cgroup.tasks_files() if holder.cgroup else [],
            exec_argv=[self.view.python, "-m", "burst._shim.spare"])
        holder.keeper.close()  # (after go: it waits for its container, then exits)
        holder.keeper = None
        ctl.setblocking(False)
        holder.ctl = ctl
        loop = asyncio.get_running_loop()
        said = b""
        async with asyncio.timeout(self.spare_timeout):
            while not said.endswith(b"\n"):
                chunk = await loop.sock_recv(ctl, 4096)
                if not chunk:
                    break
                said += chunk
        if said != b"ready\n":
            raise zyg.ZygoteError(f"the image's spare python did not start (said {said!r})")

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _discard(self, holder: _Holder) -> None:
        self._later(self._drop_spare(holder))

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the spare sandbox's bwrap to be gone."""
        spares = [h for h in [self._spare, *self._gpu_spares.values()] if h is not None]
        making = [t for t in [self._spare_task, *self._gpu_tasks.values()] if t is not None]
        self.close()
        await asyncio.gather(*making, return_exceptions=True)
        for spare in spares:
            await spare.proc.wait()

    def close(self) -> None:
        """Give back the spare sandbox and stop the zygote (running containers stay)."""
        self._spares = False
        for task in [self._spare_task, *self._gpu_tasks.values()]:
            if task is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed (at exit)
                    task.cancel()
        spares = [self._spare, *self._gpu_spares.values()]
        self._spare = None
        self._gpu_spares.clear()
        for spare in spares:
            if spare is not None:
                self._close_now(spare)
        if self.zygote is not None:
            with contextlib.suppress(Exception):  # at exit its transport may be gone
                self.zygote.close()

    def _close_now(self, spare: _Holder) -> None:
        """Kill a spare sandbox and remove what it had (no loop needed: at exit too)."""
        if spare.keeper is not None:
            spare.keeper.close()
        if spare.ctl is not None:
            spare.ctl.close()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # at exit: its holder dies with the agent (--die-with-parent)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spare.proc.pid, signal.SIGKILL)
        spare.release()
        for sock in (spare.out_r, spare.err_r):
            sock.close()
        for path in (spare.remove, spare.sock_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        if spare.cgroup is not None:
            spare.cgroup.remove()  # (kills what is left in it)


#: Bundles of more files than this make their own sandbox (linking them in costs more).
SPARE_BUNDLE_FILES = 500
#: An image's spare python's CPU weight while it starts (its container's limits replace
#: it when a container takes it).
SPARE_CPU = 1.0
#: Bytes kept in a spare python's environment for its container's (``_rewrite_environ``).
SPARE_ENV_PAD = 8192


class _TooBig(OSError):
    pass


@dataclass
class _Holder:
    """bwrap around a holder (``zygote.HOLDER``): a sandbox waiting for its container."""

    proc: asyncio.subprocess.Process
    out_r: socket.socket
    out_w: socket.socket
    err_r: socket.socket
    err_w: socket.socket
    exit_w: int
    info: asyncio.Future[bytes]
    up: asyncio.Future[bytes]
    #: What the container's handle removes when it is gone (its private dir; a spare's
    #: whole dir).
    remove: Path
    #: When bwrap started; for a spare, when a container took it.
    t0: float
    spare: bool = False
    #: A spare's socket dir (bound read-only at ``sandbox.SOCKET_DIR``).
    sock_dir: Path | None = None
    #: The zygote's keeper, and the host pid of the container it forked (which waits).
    keeper: zyg.Keeper | None = None
    pid: int | None = None
    #: The network setup of a networked sandbox (done before its container runs).
    net: asyncio.Future[None] | None = None
    #: An image's spare python: the socket it waits on, and its own cgroup.
    ctl: socket.socket | None = None
    cgroup: sb.Cgroup | None = None

    async def kill(self) -> None:
        if self.keeper is not None:
            self.keeper.close()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        for f in (self.info, self.up, self.net):
            if f is not None:
                f.cancel()
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        for sock in (self.out_r, self.err_r):
            sock.close()  # no-op for those a transport took over (detached)

    def release(self) -> None:
        """Close the agent's copies of what the container (or the keeper) holds."""
        self.out_w.close()
        self.err_w.close()
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1


def _link_tree(src: Path, dst: Path, max_files: int) -> None:
    """Hard-link the bundle ``src`` into ``dst`` (a spare's bundle dir, bound read-only in
    its sandbox): directories made, files linked, symlinks copied."""
    count = 0
    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        here = dst if rel == "." else dst / rel
        for d in dirs:
            path = os.path.join(top, d)
            if os.path.islink(path):  # os.walk does not descend into it: copy the link
                os.symlink(os.readlink(path), here / d)
            else:
                (here / d).mkdir(mode=0o755)
        for f in files:
            count += 1
            if count > max_files:
                raise _TooBig(f"more than {max_files} files")
            path = os.path.join(top, f)
            if os.path.islink(path):
                os.symlink(os.readlink(path), here / f)
            else:
                os.link(path, here / f)


def _remove_stale_spares(state: Path) -> None:
    """Spare sandboxes' dirs left by agents that are gone (their holders died with them)."""
    for parent, prefix in ((state, "spare-"), (Path(tempfile.gettempdir()), "burst-spare-")):
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if not entry.name.startswith(prefix):
                    continue
                try:
                    os.kill(int(entry.name[len(prefix):].split("-")[0]), 0)
                except ProcessLookupError:
                    shutil.rmtree(entry, ignore_errors=True)
                except (ValueError, PermissionError):
                    continue
