"""The container runtime interface, and the process runtime (a subprocess per container).

Every runtime starts Burst's shim (``python -m burst._shim``) with the bundle as working
directory and the agent's socket path in its environment; the shim protocol is the same
whatever the runtime. The process runtime runs the shim inside the agent's sandbox
(``sandbox.py``: bubblewrap, cgroup limits, a non-root uid) when one is available.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from burst_agent import sandbox as sb
from burst_agent import zygote as zyg
from burst_core import logs

log = logs.get("burst.agent.runtime")


@dataclass
class ContainerSpec:
    container_id: str
    bundle_dir: Path
    socket_path: Path
    module: str
    qualname: str
    env: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.125
    memory_mb: int = 128
    gpu_indices: list[int] = field(default_factory=list)
    #: Hard memory limit (MiB); 0 means the request, ``memory_mb``.
    memory_limit_mb: int = 0
    #: CPU limit (cores); 0 means the request plus the agent's ``cpu_headroom``.
    cpu_limit: float = 0.0


class ContainerHandle(Protocol):
    pid: int | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...
    def signal(self, sig: int) -> None: ...
    def exit_reason(self) -> str:
        """After ``wait``: why the runtime killed the process ("out of memory (limit 512
        MiB)"), or "" when it exited (or crashed) by itself."""
        ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: ContainerSpec) -> ContainerHandle: ...


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
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)

    def exit_reason(self) -> str:
        return self._reason

    def signal(self, sig: int) -> None:
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
                 state_dir: Path | None = None, zygote: bool = False) -> None:
        self.python = python or sys.executable
        self.sandbox = sandbox
        self.state_dir = state_dir
        # The zygote forks into a sandbox bwrap built (setns): that takes root.
        self.zygote = (zyg.Zygote(self.python) if zygote and self.sandboxed
                       and os.geteuid() == 0 else None)
        self._warming: asyncio.Task[None] | None = None
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

    def _env(self, spec: ContainerSpec, home: str, bundle: str, sock: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "TMPDIR": home if self.sandboxed else os.environ.get("TMPDIR", "/tmp"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "BURST_SHIM_SOCKET": sock,
            "BURST_SHIM_MODULE": spec.module,
            "BURST_SHIM_QUALNAME": spec.qualname,
            "BURST_CONTAINER_ID": spec.container_id,
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
            **spec.env,
        }

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None and self.sandbox.enabled

    async def start(self, spec: ContainerSpec) -> ProcessHandle:
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
        state = self.state_dir or spec.socket_path.parent
        private = state / spec.container_id
        cgroup = box.prepare(spec.container_id, private, spec.cpu,
                             spec.memory_limit_mb or spec.memory_mb, spec.cpu_limit)
        box.socket_ready(spec.socket_path)
        if self.zygote is not None:
            try:
                return await self._fork(spec, box, cgroup, private)
            except zyg.ZygoteError as e:  # a fresh interpreter still starts the container
                log.warning("zygote_failed", container_id=spec.container_id, error=str(e))
            except BaseException:
                if cgroup is not None:
                    cgroup.remove()
                shutil.rmtree(private, ignore_errors=True)
                raise
        try:
            env = self._env(spec, sb.PRIVATE, sb.BUNDLE, sb.SOCKET)
            argv = box.command([self.python, "-m", "burst._shim"], bundle_dir=spec.bundle_dir,
                               socket_path=spec.socket_path, private_dir=private,
                               gpu_indices=spec.gpu_indices)
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, preexec_fn=box.preexec(cgroup),
            )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(private, ignore_errors=True)
            raise
        return ProcessHandle(proc, cgroup, private)


    async def _fork(self, spec: ContainerSpec, box: sb.Sandbox, cgroup: sb.Cgroup | None,
                    private: Path) -> ProcessHandle:
        """The sandbox around a holder, then the zygote forks the container into it."""
        assert self.zygote is not None
        # What the agent reads are socketpairs, not pipes: a socket handed to the loop is
        # owned by its transport under asyncio and uvloop alike (a pipe's file object is
        # not, under uvloop, and closing it twice closes some other fd).
        out_r, out_w = socket.socketpair()
        err_r, err_w = socket.socketpair()
        ready_r, ready_w = socket.socketpair()
        info_r, info_w = socket.socketpair()
        exit_r, exit_w = os.pipe()  # the holder's stdin: never read by the agent
        socks = [out_r, out_w, err_r, err_w, ready_r, ready_w, info_r, info_w]
        proc = None
        keeper: zyg.Keeper | None = None
        t0 = time.perf_counter()
        try:
            argv = box.command(zyg.HOLDER, bundle_dir=spec.bundle_dir,
                               socket_path=spec.socket_path, private_dir=private,
                               gpu_indices=spec.gpu_indices,
                               extra=["--info-fd", str(info_w.fileno())])
            proc = await asyncio.create_subprocess_exec(
                # The id marks the holder as the container's, on the host (ps e, /proc).
                *argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                            "BURST_CONTAINER_ID": spec.container_id},
                # No preexec_fn (it forces a full fork of the agent; without it the
                # child is spawned with vfork): the holder and bwrap need no cgroup, the
                # keeper puts itself and the container into it before the container runs.
                stdin=exit_r, stdout=ready_w.fileno(), stderr=err_w.fileno(),
                pass_fds=[info_w.fileno()], start_new_session=True)
            os.close(exit_r)
            exit_r = -1
            ready_w.close()
            info_w.close()
            # While bwrap sets the sandbox up: the keeper joins the cgroups, then forks the
            # container into the sandbox's pid namespace as soon as it exists.
            keeper = await self.zygote.prefork(
                cwd=sb.BUNDLE, env=self._env(spec, sb.PRIVATE, sb.BUNDLE, sb.SOCKET),
                uid=box.uid, gid=box.gid, cgroup_tasks=cgroup.tasks_files() if cgroup else [],
                out_fd=out_w.fileno(), err_fd=err_w.fileno(), exit_fd=exit_w)
            info_text = await zyg.read_until(info_r, zyg.is_json)
            pid = await keeper.fork(zyg.info_pid(info_text))
            up = await zyg.read_until(ready_r, lambda b: b.endswith(b"\n"))
            if not up:
                raise zyg.ZygoteError("the sandbox did not come up (bwrap failed)")
            t_up = time.perf_counter()
            await keeper.go()
            handle = ProcessHandle(proc, cgroup, private)
            handle.pid, handle.child_pid = pid, pid
            handle.stdout = await zyg.socket_reader(out_r)
            handle.stderr = await zyg.socket_reader(err_r)
        except BaseException:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            for sock in socks:
                sock.close()  # no-op for those a transport took over (detached)
            raise
        finally:
            if keeper is not None:
                keeper.close()  # without go: it kills what it forked and exits
            out_w.close()  # the container has its own copies now
            err_w.close()
            for fd in (exit_r, exit_w):
                if fd >= 0:
                    os.close(fd)
        log.info("container_forked", container_id=spec.container_id,
                 sandbox_ms=round((t_up - t0) * 1000, 1),
                 fork_ms=round((time.perf_counter() - t_up) * 1000, 1))
        return handle


def make_runtime(name: str, python: str = "", sandbox: sb.Sandbox | None = None,
                 state_dir: Path | None = None, zygote: bool = False) -> Runtime:
    if name == "process":
        return ProcessRuntime(python, sandbox, state_dir, zygote)
    raise ValueError(f"unknown runtime {name!r}: use 'process'")


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
