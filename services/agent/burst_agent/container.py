"""One container on this agent: its process, its socket, its inputs, its metering.

Life of a container: placement -> bundle unpacked -> socket bound -> process started
(``container.started``) -> shim imported the user's module (``container.ready``) ->
its free slots join the function's pull on this agent (inputs.py: one continuous pull
for all the function's containers here, each input to the most recently freed slot),
inputs relayed to the shim and answered -> stopped (``container.stopped``, final
metering record, allocation released on the agent's record). The consumer is created
(if need be) while the process starts, so the first input is pulled as soon as it is
ready.

Invariants:
- ``_slots`` counts the free slots: ``_dispatch`` takes one for each input the pull
  hands it; every way out gives it back (done, timed out, handed back, never run) and,
  while the container is joined, back to the pull, whose stack then holds one entry per
  free slot; the container leaves the pull whenever ``_stopping`` is set (stop,
  unresponsive, the end of ``run``), its free slots with it;
- an input is acked only after its output is stored (or found already stored);
- a stopping container hands its in-flight inputs back at once (nak), except when the
  stop is a kill for a timeout, whose input gets a ``timeout`` output;
- the output subject carries the attempt number and is published with an expected last
  subject sequence of 0, so only the first output of an attempt is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from burst import _protocol as proto
from burst.exception import Error as BurstError
from burst_agent.attempts import GiveUp
from burst_agent.inputs import InputPuller
from burst_agent.runtimes import images
from burst_agent.runtimes.base import SIGKILL, SIGTERM, ContainerHandle
from burst_core import bus, logs, names
from burst_core.schemas import (
    ContainerReady,
    ContainerStarted,
    ContainerStopped,
    ContainerView,
    Input,
    InputDecoder,
    LogLine,
    MeteringRecord,
    Output,
    OutputItem,
    Placement,
    encode,
)

if TYPE_CHECKING:
    from burst_agent.agent import Agent

log = logs.get("burst.agent.container")

WRONG_LAST_SEQUENCE = 10071
#: Outcomes a metering record counts as failed calls (``terminated``, a cancellation, is
#: not a failure of the function).
_FAILED = frozenset({"failure", "timeout", "internal"})


@dataclass
class InFlight:
    msg: Msg
    inp: Input
    started: float
    #: When the input's last in-progress ack went out (monotonic); see _keepalive_loop.
    progress_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False


@dataclass
class Container:
    agent: Agent
    placement: Placement
    state: str = "starting"
    idle_since: float | None = None
    started_at: float = 0.0
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    handle: ContainerHandle | None = None
    stop_reason: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        p = self.placement
        self.id = p.container_id
        self.fn = p.function
        self.fn_key = names.function_key(p.workspace, p.app, p.function.name)
        self.max_inputs = max(1, p.function.max_inputs)
        self.log = log.bind(container_id=self.id, fn_key=self.fn_key)
        self._ready: asyncio.Future[proto.Ready | proto.StartupFailed] = (
            asyncio.get_running_loop().create_future())
        self._writer: asyncio.StreamWriter | None = None
        #: Free input slots (see the invariants above).
        self._slots = self.max_inputs
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The function's pull on this agent, from ready until stopping.
        self._puller: InputPuller | None = None
        #: The function's consumer, made while the container starts.
        self._binding: asyncio.Task[None] | None = None
        self.socket_path = Path(self.agent.socket_dir) / f"{self.id}.sock"
        self.last_alive = time.monotonic()
        self.unresponsive = False
        self.handed_back: set[str] = set()
        #: Inputs running when the container stopped (its stopped event says so).
        self._inputs_at_stop = 0
        self.done = asyncio.Event()
        #: Calls whose output this container stored since the last metering record that
        #: went out, by outcome; they ride on that record (see _meter).
        self._succeeded = 0
        self._failed = 0
        #: The metering interval under way and when it began (see _meter).
        self._interval, self._interval_start = 0, 0.0

    # ---- views ---------------------------------------------------------------------
    def view(self) -> ContainerView:
        return ContainerView(container_id=self.id, fn_key=self.fn_key, state=self.state,  # type: ignore[arg-type]
                             idle_since=self.idle_since, in_flight=len(self.in_flight),
                             max_inputs=self.max_inputs,
                             busy_since=min((i.started for i in self.in_flight.values()),
                                            default=None),
                             acks=[i.msg.reply for i in self.in_flight.values() if i.msg.reply])

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """The whole life of the container; returns once it is stopped and accounted."""
        exit_code: int | None = None
        server: asyncio.AbstractServer | None = None
        try:
            bundle_dir = await self.agent.bundles.get(self.placement.workspace,
                                                      self.placement.bundle_hash)
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            server = await asyncio.start_unix_server(self._on_connect, path=str(self.socket_path))
            if self.agent.runtime.name == "process":
                images.check_process_runtime(self.fn.image)
            spec = images.ImageContainerSpec(
                container_id=self.id, bundle_dir=bundle_dir, socket_path=self.socket_path,
                module=self.fn.module, qualname=self.fn.qualname,
                cpu=self.placement.resources.cpu, memory_mb=self.placement.resources.memory_mb,
                memory_limit_mb=self.placement.resources.memory_limit_mb,
                gpu_indices=list(self.placement.gpu_indices),
                env={**(images.process_env(self.fn.image)
                        if self.agent.runtime.name == "process" else {}),
                     "BURST_SHIM_HEARTBEAT_INTERVAL":
                     str(self.agent.settings.container_heartbeat_interval)},
                image=self.fn.image, build_log=self._build_line,
            )
            # Overlapped with the start: the function's consumer is made (if need be),
            # and the started event goes out, while the shim imports the module.
            self._binding = asyncio.create_task(self._bind())
            self.handle = await self.agent.runtime.start(spec)
            self.started_at = time.time()
            self._interval, self._interval_start = 0, self.started_at
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
            if isinstance(ready, proto.Ready):
                self.state, self.idle_since = "idle", time.time()
                self._spawn(self._join_inputs())  # first: the event need not hold the input
                self._spawn(self._watch_alive())
                self._spawn(self._keepalive_loop())
                await self._event("ready", ContainerReady(
                    container_id=self.id, agent_id=self.agent.agent_id, fn_key=self.fn_key,
                    at=time.time()))
                self.log.info("container_ready", pid=ready.pid,
                              startup_s=round(time.time() - self.started_at, 3))
            else:
                # The user's code cannot start (import error, @enter raised): answer the
                # waiting inputs with that error instead of leaving callers hanging while
                # replacement containers fail the same way.
                await self._fail_waiting_inputs()
            exit_code = await exit_task
        except images.ImageError as e:
            # The image cannot be built or run here: the waiting callers get the reason
            # (the failing step and its output) instead of waiting for a container.
            self.log.warning("container_image_failed", error=str(e).splitlines()[0])
            self.stop_reason, self.detail = "failed_to_start", str(e)
            await self._log_line("stderr", self.detail.rstrip(), "")
            await self._fail_waiting_inputs()
        except Exception as e:
            self.log.exception("container_failed", error=repr(e))
            self.stop_reason = self.stop_reason or "failed_to_start"
            self.detail = self.detail or repr(e)
            if self.handle is not None:
                self.handle.signal(SIGKILL)
                with contextlib.suppress(Exception):
                    exit_code = await self.handle.wait()
        finally:
            self.state = "stopping"
            self._set_stopping()
            self._inputs_at_stop = len(self.in_flight)
            await self._finish_in_flight(exit_code)
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop_binding()
            if server is not None:
                server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            await self._account_stop(exit_code)
            self.done.set()

    async def _await_ready(self, exit_task: asyncio.Task[int],
                           ) -> proto.Ready | proto.StartupFailed | None:
        waiters: set[asyncio.Future[Any]] = {self._ready, exit_task}
        done, _ = await asyncio.wait(waiters, timeout=self.agent.settings.startup_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._ready in done:
            ready = self._ready.result()
            if isinstance(ready, proto.StartupFailed):
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
        self.detail = f"not ready within {self.agent.settings.startup_timeout:g} s"
        assert self.handle is not None
        self.handle.signal(SIGKILL)
        return None

    def _build_line(self, line: str) -> None:
        """An image build's output line, to the app's logs (``burst run`` shows them)."""
        self._spawn(self._log_line("stdout", f"[image build] {line}", ""))

    async def _fail_waiting_inputs(self) -> None:
        psub: Any = None
        try:
            await self._bind()
            psub = await self.agent.js.pull_subscribe_bind(
                names.function_consumer(self.fn_key), names.STREAM_INPUTS)
            msgs = await psub.fetch(self.agent.settings.startup_failure_batch, timeout=0.2)
        except (nats.errors.TimeoutError, TimeoutError):
            return
        except Exception as e:
            self.log.warning("startup_failure_fetch_failed", error=repr(e))
            return
        finally:
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()
        message = f"container failed to start: {self.detail.splitlines()[0] if self.detail else ''}"
        for msg in msgs:
            try:
                inp = InputDecoder.decode(msg.data)
            except msgspec.DecodeError:
                await bus.quiet(msg.term())
                continue
            out = Output(call_id=inp.call_id, input_id=inp.input_id, attempt=inp.attempt,
                         attempt_token=inp.attempt_token, status="failure",
                         error_type="burst.exception.ExecutionError", error_message=message,
                         traceback=self.detail, container_id=self.id, finished_at=time.time(),
                         workspace=inp.workspace)
            await self._store_output(out, msg)

    async def stop(self, reason: str, if_idle_since: float | None = None) -> bool:
        """Stop the container; with ``if_idle_since``, only if idle ever since then and
        holding no input (not even one handed to it and still being read)."""
        if self.state == "stopping" or self._stopping.is_set():
            return True
        if if_idle_since is not None and (
            self.state != "idle" or self.idle_since is None
            or self.idle_since > if_idle_since + 1e-6
            or self._slots < self.max_inputs
        ):
            self.log.info("stop_skipped_not_idle", state=self.state)
            return False
        self.log.info("container_stopping", reason=reason)
        self.stop_reason = reason
        self.state = "stopping"
        self._set_stopping()
        # Hand in-flight inputs back at once: another container picks them up.
        for inf in list(self.in_flight.values()):
            self._release(inf)
            await bus.quiet(inf.msg.nak())
        self.in_flight.clear()
        self._shutdown(reason)
        return True

    def _shutdown(self, reason: str) -> None:
        """Ask the shim to leave (``@exit`` runs); SIGTERM, then SIGKILL, if it does not."""
        self.stop_reason = self.stop_reason or reason
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(proto.frame(proto.Shutdown(reason=reason)))
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
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # only the container's own shim may talk to us
            writer.close()
            return
        self._writer = writer
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(proto.frame_length(header))
                frame = proto.from_shim_decoder.decode(body)
                await self._on_frame(frame)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        except Exception as e:
            self.log.warning("shim_protocol_error", error=repr(e))
            if self.handle is not None:
                self.handle.signal(SIGKILL)

    async def _on_frame(self, frame: proto.FromShim) -> None:
        if isinstance(frame, proto.Log):
            await self._log_line(frame.stream, frame.line, frame.call_id)
        elif isinstance(frame, proto.Alive):
            self.last_alive = time.monotonic()
            if self.unresponsive and not self.stop_reason:  # thawed: its inputs run
                self.log.warning("unresponsive_container_resumed")  # elsewhere, so it goes
                self._shutdown("unresponsive")
        elif isinstance(frame, proto.InputDone):
            await self._on_done(frame)
        elif isinstance(frame, proto.StreamItem):
            await self._on_item(frame)
        elif isinstance(frame, proto.PlatformRequest):
            # May wait (a Queue.get): never hold up the frames behind it.
            self._spawn(self._on_platform(frame))
        elif isinstance(frame, proto.Ready | proto.StartupFailed):
            if not self._ready.done():
                self._ready.set_result(frame)

    # ---- inputs --------------------------------------------------------------------
    async def _join_inputs(self) -> None:
        """Once the function's consumer exists (made while the process started, so
        normally at once), offer this container's slots to the function's pull here."""
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
            if not self._stopping.is_set():
                self._puller = self.agent.inputs(self.fn_key, self._bind)
                self._puller.join(self, self._slots)
            return

    def _set_stopping(self) -> None:
        """No new inputs: the container leaves the function's pull (its free slots with it)."""
        self._stopping.set()
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
        """Create the function's consumer if need be (idempotent)."""
        cfg = ConsumerConfig(
            durable_name=names.function_consumer(self.fn_key), ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.agent.settings.ack_wait, deliver_policy=DeliverPolicy.ALL,
            filter_subject=names.input_subject(self.fn_key), max_ack_pending=-1,
        )
        await bus.ensure_consumer(self.agent.js, names.STREAM_INPUTS, cfg)

    def _dispatch(self, msg: Msg) -> None:
        """Run an input in one of this container's free slots, which the function's pull
        picked for it (and counted as taken). Every way out that does not run the input
        gives the slot back. Called as the input is read (it must not wait): what waits
        runs in a task."""
        self._slots -= 1
        if self._stopping.is_set():
            self._free_slot()
            self._spawn(bus.quiet(msg.nak()))
            return
        try:
            inp = InputDecoder.decode(msg.data)
        except msgspec.DecodeError as e:
            self._free_slot()
            self.log.warning("input_undecodable", error=repr(e))
            self._spawn(bus.quiet(msg.term()))
            return
        if inp.call_id in self.agent.cancelled:  # its terminated output is stored
            self._free_slot()
            self._spawn(bus.quiet(msg.ack()))
            return
        if bus.deliveries(msg) > 1 or inp.payload_ref:
            # Reads before it can run: in a task, not holding up the inputs behind it.
            self._spawn(self._dispatch_slow(msg, inp))
            return
        self._run_input(msg, inp, inp.payload)

    async def _dispatch_slow(self, msg: Msg, inp: Input) -> None:
        """A redelivered input (which attempt runs now?) or one whose argument is in the
        blob store."""
        ran = False
        try:
            if bus.deliveries(msg) > 1:
                try:
                    resumed = await self.agent.attempts.resume(inp)
                except GiveUp as e:
                    out = Output(call_id=inp.call_id, input_id=inp.input_id,
                                 attempt=inp.attempt, attempt_token=inp.attempt_token,
                                 status="internal", error_type="burst.exception.InternalError",
                                 error_message=str(e), container_id=self.id,
                                 finished_at=time.time(), workspace=inp.workspace)
                    await self._store_output(out, msg)
                    return
                except Exception as e:  # the call's record cannot be read: again soon
                    self.log.warning("input_resume_failed", call_id=inp.call_id, error=repr(e))
                    await bus.quiet(msg.nak(delay=1.0))
                    return
                if resumed is None:  # already answered
                    await bus.quiet(msg.ack())
                    return
                inp = resumed
            payload = inp.payload
            if inp.payload_ref:  # an argument above the inline limit, from the blob store
                try:
                    payload = await self.agent.blob_get(inp.workspace, inp.payload_ref)
                except Exception as e:
                    inf = InFlight(msg=msg, inp=inp, started=time.time())
                    await self._store_output(self._failure(
                        inf, "failure", "burst.exception.ExecutionError",
                        f"the call's arguments ({inp.payload_ref}) cannot be read: {e}"), msg)
                    return
            if self._stopping.is_set():  # stopped meanwhile: another container runs it
                await bus.quiet(msg.nak())
                return
            self._run_input(msg, inp, payload)
            ran = True
        except asyncio.CancelledError:  # the container is gone: another one runs it
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        finally:
            if not ran:
                self._free_slot()

    def _run_input(self, msg: Msg, inp: Input, payload: bytes) -> None:
        assert self._writer is not None
        # The input goes out first (the hot path), the bookkeeping after: nothing can
        # answer it before the caller yields.
        self._writer.write(proto.frame(proto.RunInput(
            input_id=inp.input_id, call_id=inp.call_id, attempt=inp.attempt,
            attempt_token=inp.attempt_token, payload=payload,
            payload_format=inp.payload_format)))
        inf = InFlight(msg=msg, inp=inp, started=time.time())
        inf.timer = asyncio.get_running_loop().call_later(self.fn.timeout, self._on_timeout,
                                                          inp.input_id)
        self.in_flight[inp.input_id] = inf
        self.state, self.idle_since = "busy", None

    def _free_slot(self) -> None:
        self._slots += 1
        if self._puller is not None:  # joined and not stopping
            self._puller.freed(self)

    async def _keepalive_loop(self) -> None:
        """In-progress acks for inputs running longer than a third of AckWait, so a slow
        input is not redelivered while a dead agent's are (one loop per container, not a
        task per input)."""
        every = self.agent.settings.ack_wait / 3
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for inf in list(self.in_flight.values()):
                if now - inf.progress_at >= every:
                    inf.progress_at = now
                    await bus.quiet(inf.msg.in_progress())

    def _on_timeout(self, input_id: str) -> None:
        inf = self.in_flight.get(input_id)
        if inf is None or self.handle is None:
            return
        inf.timed_out = True
        self.stop_reason = "timeout"
        self.log.warning("input_timed_out", call_id=inf.inp.call_id, timeout=self.fn.timeout)
        self.handle.signal(SIGKILL)

    def _release(self, inf: InFlight) -> None:
        if inf.timer:
            inf.timer.cancel()
        self._free_slot()

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
                for inf in list(self.in_flight.values()):
                    self._release(inf)
                    self.handed_back.add(inf.inp.input_id)
                    await bus.quiet(inf.msg.nak())
                self.in_flight.clear()
        # Frozen for good: do not keep its process and its claim forever.
        await asyncio.sleep(s.unresponsive_kill_after)
        if self.unresponsive and not self.stop_reason:
            self._shutdown("unresponsive")

    async def _on_platform(self, req: proto.PlatformRequest) -> None:
        """A Dict or Queue operation from user code, in this container's workspace."""
        ws = self.placement.workspace
        try:
            if req.kind == "dict":
                body = proto.dict_request_decoder.decode(req.body)
                resp: msgspec.Struct = await self.agent.objects.dict_op(ws, body)
            else:
                resp = await self.agent.objects.queue_op(
                    ws, proto.queue_request_decoder.decode(req.body))
            answer = proto.PlatformResponse(req_id=req.req_id, body=msgspec.msgpack.encode(resp))
        except BurstError as e:
            answer = proto.PlatformResponse(req_id=req.req_id, error_type=e.type,
                                            error_message=str(e))
        except Exception as e:
            self.log.warning("platform_request_failed", kind=req.kind, error=repr(e))
            answer = proto.PlatformResponse(req_id=req.req_id, error_type="Internal",
                                            error_message=f"{req.kind} operation failed: {e}")
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(proto.frame(answer))

    async def _on_item(self, item: proto.StreamItem) -> None:
        """One item of a generator: stored in order, before the call's output."""
        inf = self.in_flight.get(item.input_id)
        if inf is None:
            return
        inp = inf.inp
        msg = OutputItem(call_id=inp.call_id, attempt=inp.attempt,
                         attempt_token=inp.attempt_token, index=item.index, payload=item.payload,
                         payload_format=inp.payload_format)
        try:
            await bus.publish(self.agent.js, names.items_subject(inp.call_id, inp.attempt),
                              encode(msg), msg_id=f"{inp.input_id}:{inp.attempt}:{item.index}")
        except Exception as e:  # the caller misses an item; the output reports the count
            self.log.error("item_store_failed", call_id=inp.call_id, error=repr(e))

    async def _on_done(self, done: proto.InputDone) -> None:
        inf = self.in_flight.pop(done.input_id, None)
        if inf is None:
            # Handed back already (stopping, unresponsive): another attempt answers it.
            if done.input_id in self.handed_back:
                self.log.warning("late_output_refused", input_id=done.input_id)
            return
        self._release(inf)
        out = Output(
            call_id=inf.inp.call_id, input_id=inf.inp.input_id, attempt=inf.inp.attempt,
            attempt_token=inf.inp.attempt_token, status=done.status, payload=done.payload,
            error_type=done.error_type, error_message=done.error_message,
            traceback=done.traceback, container_id=self.id, log_lines=done.log_lines,
            started_at=done.started_at, finished_at=done.finished_at,
            payload_format=inf.inp.payload_format, workspace=inf.inp.workspace,
        )
        if not self.in_flight and self.state == "busy":
            self.state, self.idle_since = "idle", time.time()
        if len(out.payload) > proto.INLINE_PAYLOAD_LIMIT:  # too big for a NATS message
            try:
                out.payload_ref = await self.agent.blob_put(inf.inp.workspace, out.payload)
                out.payload = b""
            except Exception as e:
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"the result ({len(out.payload)} bytes) cannot be stored: {e}")
        await self._complete(out, inf)

    async def cancel(self, call_id: str) -> None:
        """Stop a cancelled call if it runs here (its terminated output is already stored).

        Running Python code cannot be interrupted safely, so the container is killed; the
        scheduler replaces it if there is more work.
        """
        for inf in self.in_flight.values():
            if inf.inp.call_id == call_id and self.handle is not None:
                self.log.info("call_cancelled_killing_container", call_id=call_id)
                self.stop_reason = "cancelled"
                self.handle.signal(SIGKILL)
                return

    async def _complete(self, out: Output, inf: InFlight) -> None:
        """Store an attempt's output as the call's result, unless it failed with user
        retries left: then the input comes back after the retry's backoff."""
        if inf.inp.call_id in self.agent.cancelled:
            await bus.quiet(inf.msg.ack())  # the cancellation is the call's result
            return
        if out.status in ("failure", "timeout") and self.fn.retries is not None:
            delay = await self.agent.attempts.schedule_retry(inf.inp, self.fn.retries)
            if delay is not None:
                await bus.quiet(inf.msg.nak(delay=delay))
                return
        await self._store_output(out, inf.msg)

    async def _store_output(self, out: Output, msg: Msg) -> None:
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        try:
            await bus.publish(self.agent.js, names.output_subject(out.call_id, out.attempt),
                              encode(out), msg_id=f"{out.input_id}:{out.attempt}", headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                self.log.error("output_store_failed", call_id=out.call_id, error=repr(e))
                await bus.quiet(msg.nak(delay=1.0))
                return
            self.log.info("duplicate_output_dropped", call_id=out.call_id, attempt=out.attempt)
        except Exception as e:
            self.log.error("output_store_failed", call_id=out.call_id, error=repr(e))
            await bus.quiet(msg.nak(delay=1.0))
            return
        else:  # stored by this container: the call's one result (a duplicate is not)
            if out.status == "success":
                self._succeeded += 1
            elif out.status in _FAILED:
                self._failed += 1
        self.agent.ack_later(msg)

    async def _finish_in_flight(self, exit_code: int | None) -> None:
        """The process is gone while inputs were running: answer or hand them back."""
        for inf in list(self.in_flight.values()):
            self._release(inf)
            if inf.timed_out:
                out = self._failure(inf, "timeout", "FunctionTimeoutError",
                                    f"function {self.fn.name!r} timed out after "
                                    f"{self.fn.timeout:g} s")
            elif why := self._killed_because():
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"container killed: {why}")
            else:
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"container {self.id} exited with code {exit_code} "
                                    "while running the call")
            await self._complete(out, inf)
        self.in_flight.clear()

    def _killed_because(self) -> str:
        """Why the runtime killed the process ("out of memory (limit 512 MiB)"), or ""."""
        why = self.handle.exit_reason() if self.handle is not None else ""
        if why.startswith("out of memory"):
            self.stop_reason = self.stop_reason or "oom"
            self.detail = self.detail or f"container killed: {why}"
        return why

    def _failure(self, inf: InFlight, status: str, etype: str, message: str) -> Output:
        return Output(call_id=inf.inp.call_id, input_id=inf.inp.input_id, attempt=inf.inp.attempt,
                      attempt_token=inf.inp.attempt_token, status=status,  # type: ignore[arg-type]
                      error_type=etype, error_message=message, container_id=self.id,
                      started_at=inf.started, finished_at=time.time(),
                      workspace=inf.inp.workspace)

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

    async def _log_line(self, stream: str, line: str, call_id: str) -> None:
        p = self.placement
        msg = LogLine(workspace=p.workspace, app=p.app, function=self.fn.name, container_id=self.id,
                      call_id=call_id, stream=stream, line=line, at=time.time())  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            await self.agent.nc.publish(names.log_subject(self.fn_key), encode(msg))

    async def _event(self, kind: str, event: msgspec.Struct) -> None:
        await bus.publish(self.agent.js, names.container_event_subject(kind, self.agent.agent_id),
                          encode(event), msg_id=f"{self.id}:{kind}")

    async def _metering_loop(self) -> None:
        while True:
            await asyncio.sleep(self.agent.settings.metering_interval)
            await self._meter(final=False)

    async def _meter(self, final: bool) -> None:
        p = self.placement
        now = time.time()
        rec = MeteringRecord(
            container_id=self.id, interval=self._interval,
            start=self._interval_start or now, end=now,
            workspace=p.workspace, app=p.app, function=self.fn.name, agent_id=self.agent.agent_id,
            resources=p.resources, spot=p.spot, final=final,
            succeeded=self._succeeded, failed=self._failed,
        )
        try:
            await bus.publish(self.agent.js,
                              names.metering_subject(p.workspace, self.agent.agent_id),
                              encode(rec), msg_id=f"{self.id}:{self._interval}")
        except Exception as e:  # kept for the next record: the span and counts are not lost
            self.log.warning("metering_publish_failed", error=repr(e))
            return
        self._interval += 1
        self._interval_start = now
        # Less what the record carried, not zeroed: outputs stored while it was being
        # published belong to the next one.
        self._succeeded -= rec.succeeded
        self._failed -= rec.failed

    async def _account_stop(self, exit_code: int | None) -> None:
        p = self.placement
        reason = self.stop_reason or ("crashed" if exit_code not in (0, None) else "exited")
        if self.started_at or self._succeeded or self._failed:
            # Never started (its image failed) but answered calls: a record of no span
            # carries their count.
            await bus.quiet(self._meter(final=True))
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
