"""``burst container exec``: a command run inside one of this agent's running containers.

The gateway sends an ``ExecRequest`` over core NATS; the agent answers at once (running,
or why not) and streams the command's output and then its exit code to the request's
reply subject as ``ExecOutput`` frames, with a keepalive every ``BURST_WEB_KEEPALIVE``
seconds of silence (the gateway takes the agent as lost when they stop).

Process runtime: the command enters the container's namespaces (``nsenter``: mount, pid,
network, IPC, UTS, its root and working directory), joins its cgroups and drops to its
uid as the shim did, with the container's environment (secrets included: only deploy or
admin tokens may exec). Docker runtime: the engine's exec API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from burst_core import logs, names
from burst_core.schemas import (
    ExecAccepted,
    ExecInputDecoder,
    ExecOutput,
    ExecRequest,
    ExecRequestDecoder,
    encode,
)

log = logs.get("burst.agent.exec")

#: Bytes of output per frame at most.
CHUNK = 32 << 10


class ExecHost(Protocol):
    agent_id: str
    nc: NATS
    containers: dict[str, Any]
    runtime: Any
    settings: Any


class Execs:
    def __init__(self, agent: ExecHost) -> None:
        self.agent = agent
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.agent.nc.subscribe(
            names.container_exec_subject(self.agent.agent_id), cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        try:
            req = ExecRequestDecoder.decode(msg.data)
        except Exception as e:
            await msg.respond(encode(ExecAccepted(error_type="InvalidError",
                                                  error=f"undecodable exec request: {e}")))
            return
        c = self.agent.containers.get(req.container_id)
        if c is None or c.placement.workspace != req.workspace:
            await msg.respond(encode(ExecAccepted(
                error_type="NotFoundError",
                error=f"container {req.container_id!r} is not running (it stopped)")))
            return
        if c.state not in ("idle", "busy") or c.handle is None:
            await msg.respond(encode(ExecAccepted(
                error_type="ConflictError",
                error=f"container {req.container_id!r} is {c.state}: exec needs a running "
                      "container")))
            return
        if not req.argv:
            await msg.respond(encode(ExecAccepted(error_type="InvalidError",
                                                  error="exec needs a command")))
            return
        await msg.respond(encode(ExecAccepted()))
        task = asyncio.create_task(self._run(c, req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, req: ExecRequest, kind: str, data: bytes = b"",
                    exit_code: int | None = None) -> None:
        with contextlib.suppress(Exception):
            await self.agent.nc.publish(req.reply, encode(ExecOutput(
                exec_id=req.exec_id, kind=kind, data=data, exit_code=exit_code)))

    async def _run(self, c: Any, req: ExecRequest) -> None:
        timeout = req.timeout or self.agent.settings.exec_timeout
        keepalive = asyncio.create_task(self._keepalive(req))
        code = 127
        try:
            if not hasattr(c.handle, "exec_command"):  # the Docker runtime's
                code = await asyncio.wait_for(self._docker(c, req), timeout)
            else:
                code = await self._process(c, req, timeout)
        except TimeoutError:
            await self._send(req, "stderr", f"burst: killed after {timeout:g} s "
                             "(BURST_EXEC_TIMEOUT)\n".encode())
            code = 124
        except Exception as e:
            log.warning("exec_failed", container_id=c.id, error=repr(e))
            await self._send(req, "stderr", f"burst: exec failed: {e}\n".encode())
            code = 126
        finally:
            keepalive.cancel()
        await self._send(req, "exit", exit_code=code)
        log.info("container_exec", container_id=c.id, argv0=req.argv[0], exit_code=code)

    async def _keepalive(self, req: ExecRequest) -> None:
        while True:
            await asyncio.sleep(self.agent.settings.web_keepalive)
            await self._send(req, "keepalive")

    async def _process(self, c: Any, req: ExecRequest, timeout: float) -> int:
        argv, env, cwd, preexec = c.handle.exec_command(req.argv, dict(c.exec_env))
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd,
            stdin=asyncio.subprocess.PIPE if req.interactive else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec, start_new_session=True)

        async def pump(stream: asyncio.StreamReader | None, kind: str) -> None:
            assert stream is not None
            while chunk := await stream.read(CHUNK):
                await self._send(req, kind, chunk)

        stdin_sub = None
        if req.interactive:
            assert proc.stdin is not None
            writer = proc.stdin

            async def on_input(msg: Msg) -> None:
                with contextlib.suppress(Exception):
                    chunk = ExecInputDecoder.decode(msg.data)
                    if chunk.data:
                        writer.write(chunk.data)
                        await writer.drain()
                    if chunk.eof:
                        writer.close()

            stdin_sub = await self.agent.nc.subscribe(
                names.exec_stdin_subject(self.agent.agent_id, req.exec_id), cb=on_input)
            await self._send(req, "stdin_ready")
        try:
            await asyncio.wait_for(asyncio.gather(pump(proc.stdout, "stdout"),
                                                  pump(proc.stderr, "stderr"), proc.wait()),
                                   timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
        finally:
            if stdin_sub is not None:
                with contextlib.suppress(Exception):
                    await stdin_sub.unsubscribe()
        return proc.returncode if proc.returncode is not None else 1

    async def _docker(self, c: Any, req: ExecRequest) -> int:
        """Through the engine's exec API: its multiplexed stream read in a thread; an
        interactive exec's stdin written to the same socket."""
        from docker.utils.socket import frames_iter

        container = c.handle.container
        api = container.client.api
        loop = asyncio.get_running_loop()
        ex = await asyncio.to_thread(api.exec_create, container.id, req.argv, stdout=True,
                                     stderr=True, stdin=req.interactive)
        sock = await asyncio.to_thread(api.exec_start, ex["Id"], socket=True)
        raw = getattr(sock, "_sock", sock)  # the connection's own socket, for writing
        done: asyncio.Future[None] = loop.create_future()

        def read() -> None:
            try:
                for stream, data in frames_iter(sock, tty=False):
                    kind = "stderr" if stream == 2 else "stdout"
                    asyncio.run_coroutine_threadsafe(self._send(req, kind, data), loop)
                loop.call_soon_threadsafe(done.set_result, None)
            except Exception as e:
                loop.call_soon_threadsafe(done.set_exception, e)

        threading.Thread(target=read, name=f"exec-{req.exec_id}", daemon=True).start()
        stdin_sub = None
        if req.interactive:
            async def on_input(msg: Msg) -> None:
                with contextlib.suppress(Exception):
                    chunk = ExecInputDecoder.decode(msg.data)
                    if chunk.data:
                        await asyncio.to_thread(raw.sendall, chunk.data)
                    if chunk.eof:
                        raw.shutdown(socket.SHUT_WR)

            stdin_sub = await self.agent.nc.subscribe(
                names.exec_stdin_subject(self.agent.agent_id, req.exec_id), cb=on_input)
            await self._send(req, "stdin_ready")
        try:
            await done
        finally:
            if stdin_sub is not None:
                with contextlib.suppress(Exception):
                    await stdin_sub.unsubscribe()
            with contextlib.suppress(Exception):
                sock.close()
        info = await asyncio.to_thread(api.exec_inspect, ex["Id"])
        return int(info.get("ExitCode") or 0)
