"""Agent side of the zygote (``burst._shim.zygote``): containers as forks of a warm interpreter.

One zygote per image environment (today: per interpreter path). Starting a container
(each step overlaps bubblewrap's own setup):

1. bubblewrap starts around a holder (``sh``) with exactly the sandbox a fresh container
   gets (``Sandbox.command``: mounts, namespaces); the holder says it is up on its stdout
   once the mounts are in place, then waits on its stdin for an exit code;
2. the agent asks the zygote for a keeper (:meth:`Zygote.prefork`), passing the
   container's stdout/stderr and the holder's stdin;
3. as soon as bwrap names the sandbox's host pid (``--info-fd``) the agent passes it on
   (:meth:`Keeper.fork`): the keeper forks the container into the sandbox's pid
   namespace, where it waits, and replies with its host pid;
4. once the holder is up the agent tells the container who it is (:meth:`Keeper.go`:
   environment, uid, cgroups): it joins its cgroups, enters the rest of the sandbox and
   runs the shim. When it exits the keeper hands its exit code to the holder, so
   bubblewrap (the agent's child) exits with it.

A spare sandbox (``process.py``) goes through steps 1-3 before its container exists.

Killing bubblewrap's process group ends the sandbox's pid namespace and with it the
container; SIGTERM goes to the container process itself, so ``@exit`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable

from burst_agent.runtimes import sandbox as sb
from burst_core import logs

log = logs.get("burst.agent.zygote")

HOLDER = ["/bin/sh", "-c", 'echo; read code || exit 111; exit "$code"']


#: An isolated zygote's start: Burst's paths (the agent's own), then the zygote.
BOOT = ("import os, sys\n"
        "sys.path += [p for p in os.environ['BURST_ZYGOTE_PATH'].split(os.pathsep)\n"
        "             if p and p not in sys.path]\n"
        "from burst._shim.zygote import main\n"
        "main()\n")


def trusted_paths() -> list[str]:
    """Where the agent's own interpreter finds Burst and its packages (the operator's
    install: the agent's ``sys.path``, its site-packages processed by the agent itself)."""
    import cloudpickle
    import msgspec

    import burst

    # The packages' own dirs first (an editable install finds them by an import hook).
    found = [os.path.dirname(os.path.dirname(os.path.abspath(str(m.__file__))))
             for m in (burst, msgspec, cloudpickle)]
    return list(dict.fromkeys([*found, *(p for p in sys.path if p and os.path.isabs(p))]))


class ZygoteError(RuntimeError):
    pass


class Zygote:
    """One warm interpreter, started lazily, restarted when it died."""

    def __init__(self, python: str, ready_timeout: float = 60.0,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 imports: list[str] | None = None,
                 extra_env: dict[str, str] | None = None,
                 isolated: bool = False, venv: str = "") -> None:
        #: Seconds the zygote may take to import and say ready (a fresh interpreter's job).
        self.python = python
        #: A command the interpreter runs under (an image's: bwrap with the image's root),
        #: and the environment it gets instead of the agent's (``PATH``, ``PYTHONPATH``).
        self.prefix = prefix or []
        self.env = env
        self.ready_timeout = ready_timeout
        #: Modules imported before the zygote forks anything (``BURST_ZYGOTE_IMPORTS``).
        self.imports = list(imports or [])
        #: More of its environment (an unsandboxed agent's ``LD_LIBRARY_PATH``).
        self.extra_env = dict(extra_env or {})
        #: ``-I -S``: no site processing, no environment, Burst's paths given explicitly
        #: (``trusted_paths``): a root zygote reads nothing a user's image controls.
        self.isolated = isolated
        #: The image's virtual environment, entered by each container in its sandbox only.
        self.venv = venv
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()

    async def ensure(self) -> socket.socket:
        async with self._lock:
            if self.proc is not None and self.proc.returncode is None and self.sock is not None:
                return self.sock
            await self._start()
            assert self.sock is not None
            return self.sock

    async def _start(self) -> None:
        self.close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               **(self.env if self.env is not None else sb.interpreter_env()),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
               "BURST_ZYGOTE_FD": str(theirs.fileno()), **self.extra_env}
        if self.imports:
            env["BURST_ZYGOTE_IMPORTS"] = ",".join(self.imports)
        argv = [self.python, "-m", "burst._shim.zygote"]
        if self.isolated:
            env["BURST_ZYGOTE_PATH"] = os.pathsep.join(trusted_paths())
            argv = [self.python, "-I", "-S", "-c", BOOT]
        if self.venv:
            env["BURST_ZYGOTE_VENV"] = self.venv
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix, *argv, env=env, cwd="/",
                stdin=asyncio.subprocess.DEVNULL, pass_fds=[theirs.fileno()],
                preexec_fn=sb.die_with_parent,
                start_new_session=True)
        finally:
            theirs.close()
        mine.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            hello = await asyncio.wait_for(loop.sock_recv(mine, 4096), self.ready_timeout)
        except (TimeoutError, OSError) as e:
            mine.close()
            raise ZygoteError(f"zygote did not start: {e!r}") from None
        if hello != b"ready":
            mine.close()
            if hello.startswith(b"cuda: "):  # an import initialised CUDA: no forks of it
                raise ZygoteError("zygote refused to serve: "
                                  + hello[6:].decode(errors="replace"))
            raise ZygoteError(f"zygote did not start (said {hello!r})")
        self.sock = mine
        log.info("zygote_ready", python=self.python, pid=self.proc.pid)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc = None

    async def prefork(self, *, out_fd: int, err_fd: int, exit_fd: int,
                      ctl_fd: int = -1) -> Keeper:
        """A keeper for one container (its stdout, stderr and holder's stdin; ``ctl_fd``:
        an image's spare python's control socket, its stdin)."""
        sock = await self.ensure()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        body = b"{}"
        try:
            async with self._send_lock:  # one waiter per fd: add_writer keeps only one
                await _send_fds(sock, body, [out_fd, err_fd, exit_fd, theirs.fileno(),
                                             *([ctl_fd] if ctl_fd >= 0 else [])])
        except OSError as e:
            mine.close()
            self.close()
            raise ZygoteError(f"zygote is gone: {e!r}") from None
        finally:
            theirs.close()
        mine.setblocking(False)
        return Keeper(mine)


class Keeper:
    """The zygote's keeper of one container. Closing it before :meth:`go` (the sandbox did
    not come up) makes the keeper kill what it forked, if anything, and exit."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def fork(self, target_pid: int, timeout: float = 10.0) -> int:
        """Fork the container into the pid namespace of ``target_pid``; its host pid. It
        waits for :meth:`go` to enter the rest of the sandbox."""
        loop = asyncio.get_running_loop()
        # A keeper that failed (cgroups) replied and exited: its answer is still queued.
        with contextlib.suppress(OSError):
            await loop.sock_sendall(self.sock, json.dumps({"target_pid": target_pid}).encode())
        raw = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        if not raw:
            raise ZygoteError("zygote keeper exited without forking the container")
        reply = json.loads(raw)
        if "error" in reply:
            raise ZygoteError(f"zygote could not fork the container: {reply['error']}")
        return int(reply["pid"])

    async def go(self, *, cwd: str, env: dict[str, str], uid: int, gid: int,
                 cgroup_tasks: list[str], exec_argv: list[str] | None = None) -> None:
        """The sandbox is up: the container joins ``cgroup_tasks``, enters the sandbox and
        runs the shim with ``env`` in ``cwd`` as ``uid`` (with ``exec_argv``: execs that
        instead, an image's interpreter, once it is in the sandbox as ``uid``)."""
        go: dict[str, object] = {"cwd": cwd, "env": env, "uid": uid, "gid": gid,
                                 "cgroup_tasks": cgroup_tasks}
        if exec_argv:
            go["exec"] = exec_argv
        body = json.dumps({"go": go}).encode()
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, body)
        except OSError as e:
            raise ZygoteError(f"zygote keeper is gone: {e!r}") from None

    def close(self) -> None:
        self.sock.close()


async def _send_fds(sock: socket.socket, body: bytes, fds: list[int]) -> None:
    """``send_fds`` on a non-blocking socket, waiting while the zygote's queue is full
    (a burst of container starts queues faster than one zygote forks)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            socket.send_fds(sock, [body], fds)
            return
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()

            def wake(f: asyncio.Future[None] = writable) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_writer(sock.fileno(), wake)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())


class _ReadProtocol(asyncio.StreamReaderProtocol):
    """A stream that is only read: at EOF its transport closes (and with it the socket)."""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


async def _reader(sock: socket.socket, limit: int = 1 << 16,
                  ) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    transport, _ = await loop.create_unix_connection(lambda: _ReadProtocol(reader), sock=sock)
    return reader, transport


async def read_until(sock: socket.socket, done: Callable[[bytes], bool],
                     timeout: float = 30.0) -> bytes:
    """Read from a socket until ``done(data)`` or EOF; closes it."""
    reader, transport = await _reader(sock)
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while not done(data):
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
    finally:
        transport.close()
    return data


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


async def socket_reader(sock: socket.socket) -> asyncio.StreamReader:
    """A StreamReader over ``sock``; its transport owns the socket and closes it at EOF."""
    reader, _ = await _reader(sock, limit=1 << 20)
    return reader


def info_pid(info: bytes) -> int:
    try:
        return int(json.loads(info)["child-pid"])
    except (ValueError, KeyError) as e:
        raise ZygoteError(f"bwrap gave no sandbox pid ({info[:200]!r})") from e
