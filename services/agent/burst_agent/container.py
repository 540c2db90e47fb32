"""One container on this agent: its lifecycle (process, socket, shim connection, stop).

Life of a container: placement -> bundle unpacked -> socket bound -> process started
(``container.started``) -> shim imported the user's module (``container.ready``) ->
its free slots join the function's pull on this agent (inputs.py) -> inputs relayed to
the shim and answered (dispatch.py) -> stopped (``container.stopped``, final metering
record (metering.py), allocation released on the agent's record). Dict/Queue requests
from user code go to relay.py. The consumer is created (if need be) while the process
starts, so the first input is pulled as soon as it is ready.

Invariants:
- the container leaves the pull whenever ``_stopping`` is set (stop, unresponsive, the
  end of ``run``), its free slots with it;
- a stopping container hands its in-flight inputs back at once (nak), except when the
  stop is a kill for a timeout, whose input gets a ``timeout`` output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.context import Context

from burst import wire
from burst.exception import InvalidError
from burst.image import describe
from burst_agent import api_relay, relay
from burst_agent import secrets as container_secrets
from burst_agent.acks import Ack, settle
from burst_agent.dispatch import InFlight, InputDispatch
from burst_agent.host import AgentHost
from burst_agent.inputs import InputPuller
from burst_agent.metering import Meter
from burst_agent.runtimes import images
from burst_agent.runtimes.base import SIGKILL, SIGTERM, ContainerHandle
from burst_agent.volumes import ContainerVolumes, VolumeUnavailable
from burst_core import bus, calls, logs, names, tracing
from burst_core.calls.caller import Caller, Parent
from burst_core.schemas import (
    ContainerReady,
    ContainerStarted,
    ContainerStopped,
    ContainerView,
    LogLine,
    Output,
    Placement,
    encode,
)
from burst_core.tracing import TRACEPARENT, context_of, headers_of

log = logs.get("burst.agent.container")

@dataclass
class Container:
    agent: AgentHost
    placement: Placement
    state: str = "starting"
    idle_since: float | None = None
    started_at: float = 0.0
    handle: ContainerHandle | None = None
    stop_reason: str = ""
    detail: str = ""
    #: The trace of the call this container was placed for, if that call is traced.
    trace: Context | None = None
    trace_call: str = ""

    def __post_init__(self) -> None:
        p = self.placement
        self.id = p.container_id
        #: When the placement arrived (monotonic): its cold start runs from here to ready.
        self.placed_at = time.monotonic()
        #: Inputs this container answered (outputs stored).
        self.inputs_served = 0
        self.exec_env: dict[str, str] = {}
        self.fn = p.function
        self.fn_key = names.function_key(p.workspace, p.app, p.function.name)
        #: Placed for one ``burst shell`` session (its call id): it holds that session's
        #: input alone, takes no web request, and stops when the session ends.
        self.shell_call_id = p.shell_call_id
        #: Whether it serves the function's web requests.
        self.takes_web = bool(p.function.web) and not p.shell_call_id
        self.max_inputs = max(1, p.function.max_inputs)
        self.log = log.bind(container_id=self.id, fn_key=self.fn_key)
        self._ready: asyncio.Future[wire.Ready | wire.StartupFailed] = (
            asyncio.get_running_loop().create_future())
        #: Writes to the shim: a transport of its own on a duplicate of the connection's
        #: socket, so a write to a shim that just died (EPIPE) closes only it, and what
        #: the shim sent before it died is still read (see ``_on_connect``).
        self._writer: asyncio.WriteTransport | None = None
        #: Set once the shim's connection is read to its end.
        self._read_all = asyncio.Event()
        #: Frames to the shim after the first of this turn of the loop, written together
        #: at its end (None: nothing was written this turn).
        self._outgoing: list[bytes] | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The function's pull on this agent, from ready until stopping.
        self._puller: InputPuller | None = None
        #: The pull it joined (kept once it left: a crash slows its queueing down).
        self._pulled: InputPuller | None = None
        #: The function's consumer, made while the container starts.
        self._binding: asyncio.Task[None] | None = None
        self.socket_path = Path(self.agent.socket_dir) / f"{self.id}.sock"
        self.last_alive = time.monotonic()
        self.unresponsive = False
        #: Web requests running in it (burst_agent.web); they count as inputs in flight.
        self.web_in_flight = 0
        #: Inputs running when the container stopped (its stopped event says so).
        self._inputs_at_stop = 0
        #: A newer deployment of the function replaced this container's (rolling): it
        #: takes no new inputs and stops once those it holds are done (see ``retire``).
        self.retired = False
        #: The stop reason of a retired container once it holds no input.
        self.retire_reason = "redeployed"
        self.done = asyncio.Event()
        self.meter = Meter(self.agent, p, self.log)
        #: The container's inputs, their attempts and outputs.
        self.dispatch = InputDispatch(self, self.max_inputs)
        #: When its start began, its image was ready, and the shim's Ready (traces).
        self._start_times: tuple[float, float, wire.Ready] | None = None
        #: Calls run here whose record this container made sure of (their children's
        #: parent).
        self._recorded: set[str] = set()
        #: Its volume mounts, materialised before it starts (None: it mounts none).
        self.volumes: ContainerVolumes | None = None

    @property
    def in_flight(self) -> dict[str, InFlight]:
        return self.dispatch.in_flight

    # ---- views ---------------------------------------------------------------------
    def view(self) -> ContainerView:
        usage = self.agent.figures.usage.get(self.id)
        return ContainerView(container_id=self.id, fn_key=self.fn_key, state=self.state,  # type: ignore[arg-type]
                             idle_since=self.idle_since,
                             in_flight=len(self.in_flight) + self.web_in_flight,
                             max_inputs=self.max_inputs,
                             busy_since=min((i.started for i in self.in_flight.values()),
                                            default=None),
                             acks=[i.msg.reply for i in self.in_flight.values() if i.msg.reply],
                             started_at=self.started_at, inputs_served=self.inputs_served,
                             cpu_used=usage[0] if usage else None,
                             memory_used_mb=usage[1] if usage else None,
                             gpu_indices=list(self.placement.gpu_indices),
                             gpu_type=self.placement.resources.gpu_type or "")

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """The whole life of the container; returns once it is stopped and accounted."""
        exit_code: int | None = None
        server: asyncio.AbstractServer | None = None
        begun = time.time()
        try:
            bundle_dir = await self.agent.bundles.get(self.placement.workspace,
                                                      self.placement.bundle_hash)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            server = await asyncio.start_unix_server(self._on_connect, path=str(self.socket_path))
            secret_env = await container_secrets.fetch_env(
                self.agent.nc, self.agent.agent_id, self.placement,
                self.agent.settings.secrets_fetch_timeout)
            mounts: list[tuple[Path, str, bool]] = []
            volume_env: dict[str, str] = {}
            if self.fn.volumes:
                if not self._sandboxed():
                    raise VolumeUnavailable(
                        "volumes need a sandboxed container (bubblewrap) or the Docker "
                        "runtime; this agent runs plain processes")
                self.volumes = ContainerVolumes(
                    self.agent.volumes, self.agent.volume_cache, self.placement.workspace,
                    Path(self.agent.volume_cache.root).parent / "volumes" / self.id,
                    list(self.fn.volumes), self._volume_owner())
                await self.volumes.prepare()
                mounts, volume_env = self.volumes.binds(), self.volumes.env()
                self.log.info("volumes_materialised",
                              seconds=round(self.volumes.materialise_s, 3))
            # Files the image adds as each container starts (copy=False), read-only, under
            # the volumes (which come last: nothing hides them).
            mounts = [*await self._local_files(), *mounts]
            spec = images.ImageContainerSpec(
                container_id=self.id, bundle_dir=bundle_dir, socket_path=self.socket_path,
                module=self.fn.module, qualname=self.fn.qualname,
                cpu=self.placement.resources.cpu, memory_mb=self.placement.resources.memory_mb,
                memory_limit_mb=self.placement.resources.memory_limit_mb,
                gpu_indices=list(self.placement.gpu_indices),
                env={**(images.process_env(self.fn.image)
                        if self.agent.runtime.name == "process" else {}),
                     **secret_env, **volume_env,
                     "BURST_SHIM_HEARTBEAT_INTERVAL":
                     str(self.agent.settings.container_heartbeat_interval),
                     # The app this container belongs to: its id is what its functions'
                     # keys name (an ephemeral run's ap-..., a deployed app's name), so
                     # calls to sibling functions go there; the name is for display.
                     "BURST_APP_ID": self.placement.app,
                     "BURST_APP_NAME": self.placement.app_name or self.placement.app,
                     # The same id, under the name calls from the container read.
                     "BURST_APP": self.placement.app,
                     # Which image this is (``Image.imports()`` raises only in its own).
                     "BURST_IMAGE_ID": self.fn.image.ident if self.fn.image else ""},
                image=self.fn.image, build_log=self._build_line,
                block_network=self.fn.block_network, mounts=mounts,
            )
            #: What ``burst container exec`` adds to a command's environment.
            self.exec_env = spec.env
            # Overlapped with the start: the function's consumer is made (if need be),
            # and the started event goes out, while the shim imports the module.
            self._binding = asyncio.create_task(self._bind())
            prepared = time.time()
            self.handle = await self.agent.runtime.start(spec)
            self.started_at = time.time()
            self.meter.begin(self.started_at)
            self._spawn(self.event("container.started",
                                   f"container {self.id} started on agent "
                                   f"{self.agent.agent_id}"))
            started = asyncio.create_task(self._event("started", ContainerStarted(
                container_id=self.id, agent_id=self.agent.agent_id,
                workspace=self.placement.workspace, app=self.placement.app,
                function=self.fn.name, resources=self.placement.resources,
                gpu_indices=self.placement.gpu_indices, spot=self.placement.spot,
                at=self.started_at)))
            self._spawn(self._metering_loop())
            self._spawn(self._pump(self.handle.stdout, "stdout"))
            self._spawn(self._pump(self.handle.stderr, "stderr"))
            exit_task = asyncio.create_task(self.handle.wait())
            try:
                ready = await self._await_ready(exit_task)
            finally:
                await started  # stored before ready (or the container fails, as before)
            if isinstance(ready, wire.Ready):
                self.state, self.idle_since = "idle", time.time()
                self._start_times = (begun, prepared, ready)
                if self.trace is not None:
                    self._trace_start()
                if ready.in_order and self.agent.settings.input_prefetch > 0:
                    self.dispatch.allow_queue(self.agent.settings.input_prefetch)
                self._spawn(self._join_inputs())  # first: the event need not hold the input
                if self.takes_web:
                    self._spawn(self.agent.web.join(self))
                self._spawn(self._watch_alive())
                self._spawn(self.dispatch.keepalive_loop())
                await self._event("ready", ContainerReady(
                    container_id=self.id, agent_id=self.agent.agent_id, fn_key=self.fn_key,
                    at=time.time()))
                cold = time.monotonic() - self.placed_at
                self.agent.figures.cold_start(self.fn_key, cold)
                self._spawn(self.event("container.ready",
                                       f"container {self.id} ready: cold start {cold:.3f} s"))
                self.log.info("container_ready", pid=ready.pid,
                              startup_s=round(time.time() - self.started_at, 3))
            else:
                # The user's code cannot start (import error, @enter raised): answer the
                # waiting inputs with that error instead of leaving callers hanging while
                # replacement containers fail the same way.
                await self.dispatch.fail_waiting()
            exit_code = await exit_task
        except (images.ImageError, container_secrets.SecretsUnavailable,
                VolumeUnavailable) as e:
            # The image cannot be built or run here, or its secrets cannot be had: the
            # waiting callers get the reason (the failing step and its output, the missing
            # secret) instead of waiting for a container.
            self.log.warning("container_image_failed", error=str(e).splitlines()[0])
            self.stop_reason, self.detail = "failed_to_start", str(e)
            await self._log_line("stderr", self.detail.rstrip(), "")
            await self.dispatch.fail_waiting()
        except Exception as e:
            self.log.exception("container_failed", error=repr(e))
            unstopped = not self.stop_reason  # (not a stop order cut the start short)
            self.stop_reason = self.stop_reason or "failed_to_start"
            self.detail = self.detail or repr(e)
            if self.handle is not None:
                self.handle.signal(SIGKILL)
                with contextlib.suppress(Exception):
                    exit_code = await self.handle.wait()
            if (unstopped and self.state == "starting"
                    and self.placement.fail_calls_on_start_error):
                # The function's containers keep failing to start (the scheduler counted
                # them): the waiting callers get the error instead of waiting on.
                await self._log_line("stderr", f"container failed to start: {self.detail}", "")
                await self.dispatch.fail_waiting()
        finally:
            self.state = "stopping"
            self._set_stopping()
            await self._drain()
            self._inputs_at_stop = len(self.in_flight) + self.web_in_flight
            await self.dispatch.finish(exit_code)
            # Acked (and confirmed) before the stop is announced: see flush_acks.
            await self.agent.flush_acks(confirm=True)
            if self.takes_web:
                self.agent.web.gone(self)
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop_binding()
            if self.shell_call_id:
                await self._end_shell()
            if self.volumes is not None:
                # A clean exit commits, as Modal's background commit would have.
                await bus.quiet(self.volumes.close(commit=exit_code == 0))
            if server is not None:
                server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            await self._account_stop(exit_code)
            self.done.set()

    def attach_trace(self, ctx: Context, call_id: str, accepted_at: float = 0.0) -> bool:
        """A traced call accepted at ``accepted_at`` waits for this container, placed
        before its signal came: if it was still starting then (it is now, or it became
        ready after), its start goes into that call's trace (now, if it is ready). The
        first wins. Whether it went in."""
        if self.trace is not None or self.state == "stopping":
            return False
        if self._start_times is not None:
            ready = self._start_times[2]
            if not ready.entered_at or ready.entered_at <= accepted_at:
                return False  # ready before the call came: it waited for no start
        self.trace, self.trace_call = ctx, call_id
        if self._start_times is not None:
            self._trace_start()
        return True

    def _trace_start(self) -> None:
        """A traced call's cold start, step by step: image (bundle, image, secrets),
        sandbox (the runtime's start), fork (to the shim's first line), import of the
        user's module and ``@enter``, as the shim timed them."""
        assert self._start_times is not None
        begun, prepared, ready = self._start_times
        tracer, ws, call = self.agent.tracing, self.placement.workspace, self.trace_call
        now = ready.entered_at or time.time()
        span = tracer.span("agent.container_start", self.trace, ws, call, start=begun,
                            attributes={"burst.container_id": self.id,
                                        "burst.agent_id": self.agent.agent_id,
                                        "burst.runtime": self.agent.runtime.name})
        ctx = context_of(span)
        booted = max(ready.booted_at, self.started_at)
        imported = max(ready.imported_at, booted)
        entered = max(ready.entered_at, imported)
        for name, start, end in (("container.image", begun, prepared),
                                 ("container.sandbox", prepared, self.started_at),
                                 ("container.fork", self.started_at, booted),
                                 ("shim.import", booted, imported),
                                 ("shim.enter", imported, entered)):
            if ready.booted_at <= 0 and name.startswith(("shim", "container.fork")):
                continue  # an older shim: no times
            tracer.span(name, ctx, ws, call, start=start).end(int(max(end, start) * 1e9))
        span.end(int(max(now, entered) * 1e9))

    async def _await_ready(self, exit_task: asyncio.Task[int],
                           ) -> wire.Ready | wire.StartupFailed | None:
        waiters: set[asyncio.Future[Any]] = {self._ready, exit_task}
        # A web_server's own startup_timeout (waiting for its port) comes on top.
        timeout = self.agent.settings.startup_timeout + max(
            (ep.startup_timeout for ep in self.fn.web if ep.kind == "web_server"), default=0.0)
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._ready in done:
            ready = self._ready.result()
            if isinstance(ready, wire.StartupFailed):
                self.stop_reason = "failed_to_start"
                self.detail = f"{ready.error_type}: {ready.error_message}\n{ready.traceback}"
                self.log.warning("container_startup_failed", error=ready.error_type,
                                 message=ready.error_message)
                await self._log_line("stderr", self.detail.rstrip(), "")
            return ready
        if exit_task in done:
            self.stop_reason = "failed_to_start"
            self.detail = f"container exited with code {exit_task.result()} before it was ready"
            return None
        self.stop_reason = "failed_to_start"
        self.detail = f"not ready within {timeout:g} s"
        assert self.handle is not None
        self.handle.signal(SIGKILL)
        return None

    def _build_line(self, line: str) -> None:
        """An image build's output line, to the app's logs (``burst run`` shows them)."""
        self._spawn(self._log_line("stdout", f"[image build] {line}", "", "image.build"))

    async def stop(self, reason: str, if_idle_since: float | None = None) -> bool:
        """Stop the container; with ``if_idle_since``, only if idle ever since then and
        holding no input (not even one handed to it and still being read)."""
        if self.state == "stopping" or self._stopping.is_set():
            return True
        if if_idle_since is not None and (
            self.state != "idle" or self.idle_since is None
            or self.idle_since > if_idle_since + 1e-6
            or self.dispatch.slots < self.dispatch.capacity or self.web_in_flight
        ):
            self.log.info("stop_skipped_not_idle", state=self.state)
            return False
        self.log.info("container_stopping", reason=reason)
        self.stop_reason = reason
        self.state = "stopping"
        self._set_stopping()
        # Hand in-flight inputs back at once: another container picks them up.
        await self.dispatch.hand_back(refuse_late=False)
        self._shutdown(reason)
        return True

    def _shutdown(self, reason: str) -> None:
        """Ask the shim to leave (``@exit`` runs); SIGTERM, then SIGKILL, if it does not."""
        self.stop_reason = self.stop_reason or reason
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(wire.frame(wire.Shutdown(reason=reason)))
        self._spawn(self._escalate())

    async def _escalate(self) -> None:
        grace = self.agent.settings.stop_grace
        await asyncio.sleep(grace)
        if self.handle is not None:
            self.handle.signal(SIGTERM)
        await asyncio.sleep(min(grace, 2.0))
        if self.handle is not None:
            self.handle.signal(SIGKILL)

    # ---- the shim connection -------------------------------------------------------
    async def _drain(self) -> None:
        """Read what the gone process sent before it died (an input's answer, written just
        before the next input in line crashed it), up to ``shim_drain`` seconds."""
        if self._writer is None or self._read_all.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._read_all.wait(), self.agent.settings.shim_drain)

    @staticmethod
    async def _write_side(writer: asyncio.StreamWriter) -> asyncio.WriteTransport:
        sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            asyncio.Protocol, sock)
        transport.pause_reading()  # (the connection's own transport reads)
        return transport

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # only the container's own shim may talk to us
            writer.close()
            return
        try:
            self._writer = await self._write_side(writer)
        except OSError as e:  # (no descriptor left): the shim finds its socket closed
            self.log.warning("shim_connection_failed", error=repr(e))
            writer.close()
            self._read_all.set()
            return
        buf = bytearray()
        try:
            try:
                while chunk := await reader.read(1 << 16):
                    buf += chunk
                    await self._frames(buf)
            except ConnectionResetError:
                # The shim died with inputs unread (Linux then resets the connection): the
                # frames it sent before are still in the reader's buffer, the reset having
                # overtaken them; an input's answer among them counts.
                buf += bytes(getattr(reader, "_buffer", b""))
                await self._frames(buf)
        except Exception as e:
            self.log.warning("shim_protocol_error", error=repr(e))
            if self.handle is not None:
                self.handle.signal(SIGKILL)
        finally:
            self._read_all.set()
            writer.close()
            if self._writer is not None:
                self._writer.close()

    async def _frames(self, buf: bytearray) -> None:
        """Handle the whole frames at the start of ``buf`` (removed from it), in order."""
        while len(buf) >= 4:
            n = wire.frame_length(bytes(buf[:4]))
            if len(buf) < 4 + n:
                return
            frame = wire.from_shim_decoder.decode(bytes(buf[4:4 + n]))
            del buf[:4 + n]
            await self._on_frame(frame)

    async def _on_frame(self, frame: wire.FromShim) -> None:
        if isinstance(frame, wire.Log):
            await self._log_line(frame.stream, frame.line, frame.call_id)
        elif isinstance(frame, wire.Alive):
            self.last_alive = time.monotonic()
            if self.unresponsive and not self.stop_reason:  # thawed: its inputs run
                self.log.warning("unresponsive_container_resumed")  # elsewhere, so it goes
                self._shutdown("unresponsive")
        elif isinstance(frame, wire.InputDone):
            await self.dispatch.on_done(frame)
        elif isinstance(frame, wire.StreamItem):
            await self.dispatch.on_item(frame)
        elif isinstance(frame, wire.WEB_FROM_SHIM):
            self.agent.web.on_frame(self, frame)
        elif isinstance(frame, wire.PlatformRequest):
            # May wait (a Queue.get): never hold up the frames behind it.
            self._spawn(self._on_platform(frame))
        elif isinstance(frame, wire.Ready | wire.StartupFailed):
            if not self._ready.done():
                self._ready.set_result(frame)

    # ---- inputs --------------------------------------------------------------------
    async def _join_inputs(self) -> None:
        """Once the function's consumer exists (made while the process started, so
        normally at once), offer this container's slots to the function's pull here."""
        if self.shell_call_id:
            await self._take_shell()
            return
        while not self._stopping.is_set():
            early, self._binding = self._binding, None
            try:
                await (early or self._bind())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS blip: try again
                self.log.info("input_bind_retry", error=repr(e))
                await asyncio.sleep(self.agent.settings.pull_retry)
                continue
            if self.retired:  # replaced before it was ready: it never takes an input
                self._spawn_stop(self.retire_reason)
            elif not self._stopping.is_set():
                self._puller = self._pulled = self.agent.inputs(self.fn_key, self._bind)
                run = min(self.dispatch.slots, self.max_inputs)
                self._puller.join(self, run, self.dispatch.slots - run)
            return

    async def _take_shell(self) -> None:
        """A ``burst shell`` session's container: busy from ready on, it takes its
        session's input alone (held until the session is cancelled or times out, see
        ``InputDispatch``), and stops once that input is gone (``free_slot``)."""
        self.state, self.idle_since = "busy", None
        s = self.agent.settings
        deadline = time.monotonic() + s.shell_input_wait
        bound = False
        while not self._stopping.is_set():
            early, self._binding = self._binding, None
            try:
                if not bound:
                    await (early or self._bind())
                    bound = True
                msgs = await bus.pull(self.agent.js, names.STREAM_INPUTS,
                                      names.shell_consumer(self.shell_call_id), 1,
                                      min(s.fetch_timeout, s.shell_input_wait))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS blip (or the consumer gone): bind and try again
                self.log.info("shell_input_retry", error=repr(e))
                msgs, bound = [], False
                await asyncio.sleep(s.pull_retry)
            if msgs:
                self._dispatch(msgs[0])
                return
            if time.monotonic() > deadline:
                self.log.warning("shell_input_missing", call_id=self.shell_call_id)
                self._spawn_stop("shell_ended")
                return

    async def _end_shell(self) -> None:
        """The session goes with its container: its input (handed back by a stop, or never
        taken) is acked off the inputs stream (no other container would take it; an agent
        may not purge), and its consumer deleted."""
        consumer = names.shell_consumer(self.shell_call_id)
        with contextlib.suppress(Exception):
            for msg in await bus.pull(self.agent.js, names.STREAM_INPUTS, consumer, 1, 0.0):
                await settle(msg, Ack())
        with contextlib.suppress(Exception):
            await self.agent.js.delete_consumer(names.STREAM_INPUTS, consumer)

    def retire(self, reason: str = "redeployed") -> None:
        """No new inputs; the ones it holds finish here, then it stops (``reason``): a
        newer deployment of the function replaced this one (a rolling redeploy), or its
        agent drains. (Web containers of a redeploy: the web relay retires them, request
        by request.)"""
        if self.retired or self._stopping.is_set():
            return
        self.retired, self.retire_reason = True, reason
        self.log.info("container_retired", deployment_id=self.placement.deployment_id,
                      reason=reason)
        puller, self._puller = self._puller, None
        if puller is not None:
            puller.leave(self)
        if self.fn.web:
            self.agent.web.leave(self)
        self.stop_if_retired()

    def stop_if_retired(self) -> None:
        """Stop a retired container that holds no input (not even one being read)."""
        if (self.retired and not self.in_flight and not self.web_in_flight
                and self.dispatch.slots >= self.dispatch.capacity
                and self.state == "idle"):
            self._spawn_stop(self.retire_reason)

    def kill(self, reason: str) -> None:
        """Kill the process now, handing nothing back (NATS cut us off: the scheduler
        finds us lost and hands our inputs back)."""
        self.log.warning("container_killed", reason=reason, in_flight=len(self.in_flight))
        self.stop_reason = self.stop_reason or reason
        self.state = "stopping"
        self._set_stopping()
        for inf in list(self.dispatch.in_flight.values()):  # not ours to answer any more
            self.dispatch.release(inf)
        self.dispatch.in_flight.clear()
        if self.handle is not None:
            self.handle.signal(SIGKILL)

    async def interrupt(self, reason: str) -> None:
        """Stop at once: the process is killed before its inputs are handed back, so no
        input it ran can also finish here (each runs again elsewhere, once)."""
        self.log.warning("container_interrupted", reason=reason,
                         in_flight=len(self.in_flight))
        if self.handle is not None:
            self.handle.signal(SIGKILL)
        await self.stop(reason)

    def _spawn_stop(self, reason: str) -> None:
        asyncio.get_running_loop().create_task(self.stop(reason))

    def _set_stopping(self) -> None:
        """No new inputs: the container leaves the function's pull (its free slots with it)."""
        self._stopping.set()
        if self.takes_web:
            self.agent.web.leave(self)
        puller, self._puller = self._puller, None
        if puller is not None:
            puller.leave(self)

    async def _drop_binding(self) -> None:
        """The early binding, if the container never joined its inputs (the start failed)."""
        early, self._binding = self._binding, None
        if early is None:
            return
        early.cancel()
        await asyncio.wait([early])

    async def _bind(self) -> None:
        """Create the function's consumer if need be (idempotent); a shell session's
        container, its session's."""
        if self.shell_call_id:
            await bus.ensure_consumer(self.agent.js, names.STREAM_INPUTS, ConsumerConfig(
                durable_name=names.shell_consumer(self.shell_call_id),
                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.agent.settings.ack_wait,
                deliver_policy=DeliverPolicy.ALL, max_ack_pending=1,
                filter_subject=names.shell_input_subject(self.shell_call_id),
                # Gone by itself should the container never delete it (its agent died).
                inactive_threshold=max(3600.0, self.fn.timeout * 2)))
            return
        cfg = ConsumerConfig(
            durable_name=names.function_consumer(self.fn_key), ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.agent.settings.ack_wait, deliver_policy=DeliverPolicy.ALL,
            filter_subject=names.input_subject(self.fn_key), max_ack_pending=-1,
        )
        await bus.ensure_consumer(self.agent.js, names.STREAM_INPUTS, cfg)

    def send_frame(self, data: bytes) -> None:
        """Send a frame to the shim: the first of a turn of the loop at once (a lone
        input waits for nothing), the others of that turn together at its end (inputs
        delivered to this container at once go in one more write, not one each)."""
        if self._outgoing is not None:
            self._outgoing.append(data)
            return
        self._outgoing = []
        asyncio.get_running_loop().call_soon(self._write_outgoing)
        self._write(data)

    def _write_outgoing(self) -> None:
        data, self._outgoing = b"".join(self._outgoing or ()), None
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # gone: its inputs are answered at its end
                self._writer.write(data)

    def _dispatch(self, msg: Msg) -> None:
        """An input the function's pull handed to a free slot (see dispatch.py)."""
        self.dispatch.take(msg)

    async def cancel(self, call_id: str) -> None:
        """Stop a cancelled call if it runs here (see ``InputDispatch.cancel``)."""
        await self.dispatch.cancel(call_id)

    async def _watch_alive(self) -> None:
        """Hand the inputs of a frozen or wedged container to another container.

        The container is not killed: if it thaws, the outputs it then sends are refused
        (their inputs were handed back, and their attempts are no longer current)."""
        s = self.agent.settings
        while not self._stopping.is_set():
            await asyncio.sleep(s.container_heartbeat_interval)
            if time.monotonic() - self.last_alive < s.container_heartbeat_timeout:
                continue
            if not self.unresponsive and not self._stopping.is_set():
                self.unresponsive = True
                self.log.warning("container_unresponsive", in_flight=len(self.in_flight),
                                 silent_s=round(time.monotonic() - self.last_alive, 1))
                self.state = "stopping"  # counts as going away: no new inputs, replaced
                self._set_stopping()
                await self.dispatch.hand_back(refuse_late=True)
        # Frozen for good: do not keep its process and its claim forever.
        await asyncio.sleep(s.unresponsive_kill_after)
        if self.unresponsive and not self.stop_reason:
            self._shutdown("unresponsive")

    async def _on_platform(self, req: wire.PlatformRequest) -> None:
        """A Dict or Queue operation or a call from user code, in this container's
        workspace."""
        answer = await relay.answer(self.agent.objects, self.placement.workspace, req, self.log,
                                    self._api, self._volume)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(wire.frame(answer))

    def _volume_owner(self) -> int | None:
        """The uid a writable mount's files get: the sandbox's, when the agent is root
        and containers run as another user."""
        if os.geteuid() != 0 or not self._sandboxed():
            return None
        return self.agent.settings.sandbox_uid

    async def _local_files(self) -> list[tuple[Path, str, bool]]:
        """Read-only binds of the files the image adds as the container starts
        (``add_local_file/dir(copy=False)``): each step's bundle, fetched and unpacked once
        per agent under ``<home>/local-files/``."""
        steps = [s for s in (self.fn.image.steps if self.fn.image is not None else [])
                 if s.mounted and s.bundle]
        if not steps:
            return []
        if not self._sandboxed():
            raise images.ImageError(
                "files added at start (add_local_file/add_local_dir with copy=False) need a "
                "sandboxed container (bubblewrap) or the Docker runtime; this agent runs "
                "plain processes: pass copy=True to build them into the image")
        out: list[tuple[Path, str, bool]] = []
        for step in steps:
            root = await self.agent.local_files.get(self.placement.workspace, step.bundle)
            if step.kind == "add_local_file":
                files = [p for p in root.iterdir() if p.is_file()]
                if len(files) != 1:
                    raise images.ImageError(f"{describe(step)}: its bundle {step.bundle} holds "
                                            f"{len(files)} files, not one")
                out.append((files[0], step.path, True))
            else:
                out.append((root, step.path, True))
        return out

    def _sandboxed(self) -> bool:
        """Whether containers here get a filesystem of their own (Docker, or the process
        runtime's sandbox): what a volume mount needs."""
        rt = self.agent.runtime
        base = getattr(rt, "base", rt)  # (the process runtime behind its venv layer)
        return rt.name == "docker" or bool(getattr(base, "sandboxed", False))

    async def _volume(self, req: wire.VolumeRequest) -> wire.VolumeResponse:
        """A volume operation from user code: its own mounts' commit and reload here, any
        other on the workspace's volumes (as the gateway answers a client)."""
        if req.op in ("mount_commit", "mount_reload"):
            if self.volumes is None:
                raise InvalidError(f"volume {req.name!r} is not mounted in this container")
            if req.op == "mount_commit":
                return wire.VolumeResponse(version=await self.volumes.commit(req.name))
            return wire.VolumeResponse(version=await self.volumes.reload(req.name))
        mounts = [m for m in self.fn.volumes if m.name == req.name]
        if (req.op in ("put_chunk", "commit", "remove", "copy") and mounts
                and all(m.read_only for m in mounts)):
            raise InvalidError(f"volume {req.name!r} is mounted read-only in this container: "
                               "it cannot be changed from here")
        return await self.agent.volumes.op(self.placement.workspace, req)

    async def _api(self, api: wire.ApiRequest) -> wire.ApiResponse:
        """A request of the SDK's client from user code (a call, a wait for one...),
        made for the call ``api.call_id`` runs here (its parent), if it runs here."""
        caller = await self.agent.caller()
        parent = None
        inf = next((i for i in self.in_flight.values() if i.inp.call_id == api.call_id),
                   None) if api.call_id else None
        if inf is not None:
            parent = Parent(inf.inp.call_id, [*inf.inp.lineage, self.fn_key])
            if inf.inp.call_id not in self._recorded:
                # The parent's record (a call waited on may have none yet): its
                # children and the call graph are found through it.
                if len(self._recorded) > 2 * self.max_inputs + 64:  # keep running ones only
                    self._recorded &= {i.inp.call_id for i in self.in_flight.values()}
                self._recorded.add(inf.inp.call_id)
                if inf.inp.attempt == 1:
                    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                        await calls.create_record(caller.buckets.of(inf.inp.call_id),
                                                  calls.first_record(inf.inp))
        headers = inf.msg.headers if inf is not None else None
        if headers and TRACEPARENT in headers and api.method == "POST" and \
                api.path.endswith(("/calls", "/calls/batch")):
            return await self._api_traced(caller, parent, api, headers)
        return await api_relay.answer(caller, self.placement.workspace, parent, api)

    async def _api_traced(self, caller: Caller, parent: Parent | None, api: wire.ApiRequest,
                          headers: dict[str, str]) -> wire.ApiResponse:
        """Calls made by a traced call's code: an ``agent.relay`` span (a child of the
        parent call's context, kept with its trace's spans of no single call) parents
        the calls' spans (their inputs and signals carry its context)."""
        tracer = self.agent.tracing
        ctx = tracer.incoming(headers)
        if ctx is None:
            return await api_relay.answer(caller, self.placement.workspace, parent, api)
        span = tracer.span("agent.relay", ctx, self.placement.workspace, attributes={
            "burst.parent_call_id": api.call_id, "burst.container_id": self.id,
            "burst.request": f"{api.method} {api.path}"})
        token = tracing.outgoing.set(headers_of(span))
        try:
            return await api_relay.answer(caller, self.placement.workspace, parent, api)
        finally:
            tracing.outgoing.reset(token)
            span.end()

    # ---- logs, events, metering ----------------------------------------------------
    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        """Output the process writes outside the shim's capture (C code, the interpreter)."""
        if stream is None:
            return
        while True:
            line = await stream.readline()
            if not line:
                return
            await self._log_line(name, line.decode(errors="replace").rstrip("\n"), "")

    async def _log_line(self, stream: str, line: str, call_id: str, event: str = "") -> None:
        p = self.placement
        attempt = next((inf.inp.attempt for inf in self.in_flight.values()
                        if inf.inp.call_id == call_id), 1) if call_id else 1
        msg = LogLine(workspace=p.workspace, app=p.app, function=self.fn.name, container_id=self.id,
                      call_id=call_id, stream=stream, line=line, at=time.time(),  # type: ignore[arg-type]
                      attempt=attempt, event=event)
        with contextlib.suppress(Exception):
            await self.agent.nc.publish(names.log_subject(self.fn_key, self.id, call_id),
                                        encode(msg))

    async def event(self, kind: str, text: str, call_id: str = "") -> None:
        """A platform event of this container, to the app's logs (``burst app logs``); a
        shell session's container's are that session's (its gateway waits on them)."""
        await self._log_line("stderr", text, call_id or self.shell_call_id, kind)

    def observe(self, out: Output, accepted_at: float) -> None:
        """An output this container stored: its figures for ``/metrics``. (A shell
        session is no call of the function: not counted.)"""
        if self.shell_call_id:
            return
        self.inputs_served += 1
        self.agent.figures.output(self.fn_key, out, accepted_at)

    async def _event(self, kind: str, event: msgspec.Struct) -> None:
        await bus.publish(self.agent.js, names.container_event_subject(kind, self.agent.agent_id),
                          encode(event), msg_id=f"{self.id}:{kind}")

    async def _metering_loop(self) -> None:
        while True:
            await asyncio.sleep(self.agent.settings.metering_interval)
            await self.meter.publish(final=False)

    async def _account_stop(self, exit_code: int | None) -> None:
        p = self.placement
        why = self.handle.exit_reason() if self.handle is not None else ""
        if why.startswith("out of memory") and self.stop_reason in ("", "oom"):
            self.stop_reason = "oom"
        reason = self.stop_reason or ("crashed" if exit_code not in (0, None) else "exited")
        if reason == "oom":
            await bus.quiet(self.event("container.oom",
                                       f"container {self.id} killed: {why or 'out of memory'}"))
        elif reason == "preempted":
            await bus.quiet(self.event("container.preempted", f"container {self.id} preempted"))
        code = f", exit code {exit_code}" if exit_code is not None else ""
        await bus.quiet(self.event("container.stopped",
                                   f"container {self.id} stopped: {reason}{code}"))
        if self.started_at or self.meter.has_counts:
            # Never started (its image failed) but answered calls: a record of no span
            # carries their count.
            await bus.quiet(self.meter.publish(final=True))
        self.log.info("container_stopped", reason=reason, exit_code=exit_code)
        await bus.quiet(self._event("stopped", ContainerStopped(
            container_id=self.id, agent_id=self.agent.agent_id, workspace=p.workspace, app=p.app,
            function=self.fn.name, reason=reason, exit_code=exit_code, at=time.time(),
            detail=self.detail[-2000:], inputs_running=self._inputs_at_stop)))
        await bus.quiet(self.agent.release(self.id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
