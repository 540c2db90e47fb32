"""A container's inputs: each one dispatched to a free slot, its attempt resumed or
retried, its output (and generator items) stored, its message settled (acks.py).

Invariants:
- ``slots`` counts the container's free slots: ``take`` takes one for each input the
  pull hands it; every way out gives it back (done, timed out, handed back, never run)
  and, while the container is joined, back to the pull;
- an input is acked only after its output is stored (or found already stored);
- inputs handed back (stopping, unresponsive) are nak'ed at once, and their late outputs
  refused;
- the output subject carries the attempt number and is published with an expected last
  subject sequence of 0, so only the first output of an attempt is stored;
- a container whose shim runs inputs in order may hold ``queue`` inputs beyond its
  ``max_inputs`` (see ``AgentSettings.input_prefetch``): the oldest ``max_inputs`` in
  flight run, the others wait in line in the container. A waiting input's timeout starts
  when the input before it is done; if the container dies, waiting inputs are handed back
  (they never ran); a cancelled waiting input runs, its output is dropped (the call's
  cancellation is its result).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from burst import wire
from burst_agent import acks
from burst_agent.acks import Ack, InProgress, Nak, Term
from burst_agent.attempts import GiveUp
from burst_agent.host import AgentHost
from burst_agent.inputs import InputPuller
from burst_agent.metering import Meter
from burst_agent.runtimes.base import SIGKILL, ContainerHandle
from burst_core import bus, names
from burst_core.schemas import (
    FunctionSpec,
    Input,
    InputDecoder,
    Output,
    OutputItem,
    encode,
)
from burst_core.tracing import TRACEPARENT, context_of

WRONG_LAST_SEQUENCE = 10071


@dataclass
class InFlight:
    msg: Msg
    inp: Input
    started: float
    #: When the input's last in-progress ack went out (monotonic); see keepalive_loop.
    progress_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    #: Running in the container, or waiting in line there behind the ones running.
    running: bool = True
    #: When the agent took the input (the start of a traced call's ``agent.input`` span).
    received: float = field(default_factory=time.time)


class Owner(Protocol):
    """The container whose inputs these are, as its dispatch sees it."""

    agent: AgentHost
    id: str
    fn: FunctionSpec
    fn_key: str
    log: Any
    state: str
    idle_since: float | None
    stop_reason: str
    detail: str
    handle: ContainerHandle | None
    meter: Meter
    _stopping: asyncio.Event
    _writer: asyncio.WriteTransport | None
    _puller: InputPuller | None
    web_in_flight: int
    _pulled: InputPuller | None
    retired: bool
    shell_call_id: str

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def _dispatch(self, msg: Msg) -> None: ...

    def send_frame(self, data: bytes) -> None: ...

    def observe(self, out: Output, accepted_at: float) -> None: ...

    async def event(self, kind: str, text: str, call_id: str = "") -> None: ...

    def stop_if_retired(self) -> None: ...

    async def _bind(self) -> None: ...


class InputDispatch:
    def __init__(self, owner: Owner, max_inputs: int) -> None:
        self.c = owner
        self.in_flight: dict[str, InFlight] = {}
        self.max_inputs = max_inputs
        #: Inputs the container may hold: ``max_inputs``, plus those that may wait in line.
        self.capacity = max_inputs
        #: Free input slots (see the invariants above).
        self.slots = max_inputs
        #: Inputs in flight that run (the others wait in line).
        self.running = 0
        #: Inputs handed back to another container: their late outputs are refused.
        self.handed_back: set[str] = set()

    def allow_queue(self, n: int) -> None:
        """The shim runs inputs in order: ``n`` more may wait in line in the container."""
        self.capacity += n
        self.slots += n

    async def hand_back(self, refuse_late: bool) -> None:
        """Hand every in-flight input back at once: another container picks it up."""
        for inf in list(self.in_flight.values()):
            self.release(inf)
            if refuse_late:
                self.handed_back.add(inf.inp.input_id)
            await acks.settle(inf.msg, Nak())
        self.in_flight.clear()

    async def fail_waiting(self) -> None:
        if self.c.shell_call_id:  # its session's gateway sees it stop; no call waits
            return
        try:
            await self.c._bind()
            # What waits now, read to the end (nothing left in flight for AckWait).
            msgs = await bus.pull(self.c.agent.js, names.STREAM_INPUTS,
                                  names.function_consumer(self.c.fn_key),
                                  self.c.agent.settings.startup_failure_batch, 0.0)
        except Exception as e:
            self.c.log.warning("startup_failure_fetch_failed", error=repr(e))
            return
        first = self.c.detail.splitlines()[0] if self.c.detail else ""
        message = f"container failed to start: {first}"
        for msg in msgs:
            try:
                inp = InputDecoder.decode(msg.data)
            except msgspec.DecodeError:
                await acks.settle(msg, Term())
                continue
            out = Output(call_id=inp.call_id, input_id=inp.input_id, attempt=inp.attempt,
                         attempt_token=inp.attempt_token, status="failure",
                         error_type="burst.exception.ExecutionError", error_message=message,
                         traceback=self.c.detail, container_id=self.c.id, finished_at=time.time(),
                         workspace=inp.workspace)
            await self._store_output(out, msg)

    def take(self, msg: Msg) -> None:
        """Run an input in one of this container's free slots, which the function's pull
        picked for it (and counted as taken). Every way out that does not run the input
        gives the slot back. Called as the input is read (it must not wait): what waits
        runs in a task."""
        self.slots -= 1
        if self.c._stopping.is_set():
            self.free_slot()
            self.c._spawn(acks.settle(msg, Nak()))
            return
        try:
            inp = InputDecoder.decode(msg.data)
        except msgspec.DecodeError as e:
            self.free_slot()
            self.c.log.warning("input_undecodable", error=repr(e))
            self.c._spawn(acks.settle(msg, Term()))
            return
        if inp.call_id in self.c.agent.cancelled:  # its terminated output is stored
            self.free_slot()
            self.c._spawn(acks.settle(msg, Ack()))
            return
        if bus.deliveries(msg) > 1 or inp.payload_ref:
            # Reads before it can run: in a task, not holding up the inputs behind it.
            self.c._spawn(self._take_slow(msg, inp))
            return
        self._run(msg, inp, inp.payload)

    async def _take_slow(self, msg: Msg, inp: Input) -> None:
        """A redelivered input (which attempt runs now?) or one whose argument is in the
        blob store."""
        ran = False
        try:
            if bus.deliveries(msg) > 1:
                try:
                    resumed = await self.c.agent.attempts.resume(inp)
                except GiveUp as e:
                    out = Output(call_id=inp.call_id, input_id=inp.input_id,
                                 attempt=inp.attempt, attempt_token=inp.attempt_token,
                                 status="internal", error_type="burst.exception.InternalError",
                                 error_message=str(e), container_id=self.c.id,
                                 finished_at=time.time(), workspace=inp.workspace)
                    await self._store_output(out, msg)
                    return
                except Exception as e:  # the call's record cannot be read: again soon
                    self.c.log.warning("input_resume_failed", call_id=inp.call_id, error=repr(e))
                    await acks.settle(msg, Nak(1.0))
                    return
                if resumed is None:  # already answered
                    await acks.settle(msg, Ack())
                    return
                inp = resumed
            payload = inp.payload
            if inp.payload_ref:  # an argument above the inline limit, from the blob store
                try:
                    payload = await self.c.agent.blob_get(inp.workspace, inp.payload_ref)
                except Exception as e:
                    inf = InFlight(msg=msg, inp=inp, started=time.time())
                    await self._store_output(self._failure(
                        inf, "failure", "burst.exception.ExecutionError",
                        f"the call's arguments ({inp.payload_ref}) cannot be read: {e}"), msg)
                    return
            if self.c._stopping.is_set():  # stopped meanwhile: another container runs it
                await acks.settle(msg, Nak())
                return
            self._run(msg, inp, payload)
            ran = True
        except asyncio.CancelledError:  # the container is gone: another one runs it
            await acks.settle(msg, Nak())
            raise
        finally:
            if not ran:
                self.free_slot()

    def _run(self, msg: Msg, inp: Input, payload: bytes) -> None:
        assert self.c._writer is not None
        if inp.payload_format == names.SHELL_FORMAT:
            self._hold_shell(msg, inp)
            return
        # The input goes out first (the hot path), the bookkeeping after: nothing can
        # answer it before the caller yields.
        self.c.send_frame(wire.frame(wire.RunInput(
            input_id=inp.input_id, call_id=inp.call_id, attempt=inp.attempt,
            attempt_token=inp.attempt_token, payload=payload,
            payload_format=inp.payload_format)))
        inf = InFlight(msg=msg, inp=inp, started=time.time(),
                       running=self.running < self.max_inputs)
        if inf.running:
            self._start(inf)
        self.in_flight[inp.input_id] = inf
        self.c.state, self.c.idle_since = "busy", None

    def _hold_shell(self, msg: Msg, inp: Input) -> None:
        """A ``burst shell`` session: the input holds a slot of this container (busy,
        billed) until it is cancelled or times out; the function does not run. The
        session's commands come through ``burst container exec``."""
        inf = InFlight(msg=msg, inp=inp, started=time.time())
        self._start(inf)
        self.in_flight[inp.input_id] = inf
        self.c.state, self.c.idle_since = "busy", None
        self.c._spawn(self.c.event("shell.ready", f"container {self.c.id} holds shell "
                                   f"session {inp.call_id}", inp.call_id))

    def _start(self, inf: InFlight) -> None:
        """The input runs now: its timeout starts."""
        inf.running = True
        inf.started = time.time()
        self.running += 1
        inf.timer = asyncio.get_running_loop().call_later(self.c.fn.timeout, self._on_timeout,
                                                          inf.inp.input_id)

    def free_slot(self) -> None:
        self.slots += 1
        if self.c.shell_call_id:  # the session is over (or never came): it stops
            self.c._spawn(self._stop_shell())
            return
        if self.c._puller is not None:  # joined and not stopping
            # A queue slot when the inputs still here fill the run slots.
            queued = self.capacity > self.max_inputs and len(self.in_flight) >= self.max_inputs
            self.c._puller.freed(self.c, queued)

    async def _stop_shell(self) -> None:
        stop = getattr(self.c, "stop", None)
        if stop is not None:
            await stop("shell_ended")

    async def keepalive_loop(self) -> None:
        """In-progress acks for inputs running longer than a third of AckWait, so a slow
        input is not redelivered while a dead agent's are (one loop per container, not a
        task per input)."""
        every = self.c.agent.settings.ack_wait / 3
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for inf in list(self.in_flight.values()):
                if now - inf.progress_at >= every:
                    inf.progress_at = now
                    await acks.settle(inf.msg, InProgress())

    def _on_timeout(self, input_id: str) -> None:
        inf = self.in_flight.get(input_id)
        if inf is None or self.c.handle is None:
            return
        inf.timed_out = True
        self.c.stop_reason = "timeout"
        self.c.log.warning("input_timed_out", call_id=inf.inp.call_id, timeout=self.c.fn.timeout)
        self.c._spawn(self.c.event("call.timeout", f"call {inf.inp.call_id} timed out after "
                                   f"{self.c.fn.timeout:g} s", inf.inp.call_id))
        self.c.handle.signal(SIGKILL)

    def release(self, inf: InFlight) -> None:
        if inf.timer:
            inf.timer.cancel()
        if inf.running:
            inf.running = False
            self.running -= 1
        self.free_slot()

    async def on_item(self, item: wire.StreamItem) -> None:
        """One item of a generator: stored in order, before the call's output."""
        inf = self.in_flight.get(item.input_id)
        if inf is None:
            return
        inp = inf.inp
        msg = OutputItem(call_id=inp.call_id, attempt=inp.attempt,
                         attempt_token=inp.attempt_token, index=item.index, payload=item.payload,
                         payload_format=inp.payload_format)
        try:
            await bus.publish(self.c.agent.js, names.items_subject(inp.call_id, inp.attempt),
                              encode(msg), msg_id=f"{inp.input_id}:{inp.attempt}:{item.index}")
        except Exception as e:  # the caller misses an item; the output reports the count
            self.c.log.error("item_store_failed", call_id=inp.call_id, error=repr(e))

    async def on_done(self, done: wire.InputDone) -> None:
        inf = self.in_flight.pop(done.input_id, None)
        if inf is None:
            # Handed back already (stopping, unresponsive): another attempt answers it.
            if done.input_id in self.handed_back:
                self.c.log.warning("late_output_refused", input_id=done.input_id)
            return
        if inf.running:
            self.running -= 1
            inf.running = False  # (released below: counted once)
        for waiting in self.in_flight.values():  # the next in line runs now
            if self.running >= self.max_inputs:
                break
            if not waiting.running:
                self._start(waiting)
        self.release(inf)
        if self.c._puller is not None:
            self.c._puller.ran(done.finished_at - done.started_at)
        out = Output(
            call_id=inf.inp.call_id, input_id=inf.inp.input_id, attempt=inf.inp.attempt,
            attempt_token=inf.inp.attempt_token, status=done.status, payload=done.payload,
            error_type=done.error_type, error_message=done.error_message,
            traceback=done.traceback, container_id=self.c.id, log_lines=done.log_lines,
            started_at=done.started_at, finished_at=done.finished_at,
            payload_format=inf.inp.payload_format, workspace=inf.inp.workspace,
        )
        if not self.in_flight and not self.c.web_in_flight and self.c.state == "busy":
            self.c.state, self.c.idle_since = "idle", time.time()
        if len(out.payload) > wire.INLINE_PAYLOAD_LIMIT:  # too big for a NATS message
            try:
                out.payload_ref = await self.c.agent.blob_put(inf.inp.workspace, out.payload)
                out.payload = b""
            except Exception as e:
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"the result ({len(out.payload)} bytes) cannot be stored: {e}")
        await self._complete(out, inf)
        headers = inf.msg.headers
        if headers and TRACEPARENT in headers:  # a traced call (rare): its agent's spans
            self._trace(inf, done, headers)
        if self.c.retired:
            self.c.stop_if_retired()

    def _trace(self, inf: InFlight, done: wire.InputDone, headers: dict[str, str]) -> None:
        """The input's span (taken to output stored) and, within it, the user's function
        as the shim timed it (the shim reports times; it makes no spans)."""
        tracing = self.c.agent.tracing
        ctx = tracing.incoming(headers)
        if ctx is None:
            return
        inp = inf.inp
        span = tracing.span("agent.input", ctx, inp.workspace, inp.call_id, start=inf.received,
                            attributes={"burst.container_id": self.c.id,
                                        "burst.agent_id": self.c.agent.agent_id,
                                        "burst.attempt": inp.attempt,
                                        "burst.status": done.status})
        if done.started_at > 0:
            fn = tracing.span("shim.function", context_of(span), inp.workspace, inp.call_id,
                              start=done.started_at,
                              attributes={"burst.function": inp.function})
            fn.end(int(max(done.finished_at, done.started_at) * 1e9))
        span.end()

    async def cancel(self, call_id: str) -> None:
        """Stop a cancelled call if it runs here (its terminated output is already stored).

        Running Python code cannot be interrupted safely, so the container is killed; the
        scheduler replaces it if there is more work.
        """
        for inf in self.in_flight.values():
            if inf.inp.call_id == call_id and not inf.running:
                # Waiting in line: it runs, and its output is dropped (see _complete).
                self.c.log.info("call_cancelled_waiting_in_container", call_id=call_id)
                return
            if inf.inp.call_id == call_id and self.c.handle is not None:
                self.c.log.info("call_cancelled_killing_container", call_id=call_id)
                self.c.stop_reason = "cancelled"
                self.c.handle.signal(SIGKILL)
                return

    async def _complete(self, out: Output, inf: InFlight) -> None:
        """Store an attempt's output as the call's result, unless it failed with user
        retries left: then the input comes back after the retry's backoff."""
        if inf.inp.call_id in self.c.agent.cancelled:
            await acks.settle(inf.msg, Ack())  # the cancellation is the call's result
            return
        if out.status in ("failure", "timeout") and self.c.fn.retries is not None:
            delay = await self.c.agent.attempts.schedule_retry(inf.inp, self.c.fn.retries)
            if delay is not None:
                await acks.settle(inf.msg, Nak(delay))
                return
        await self._store_output(out, inf.msg, inf.inp.accepted_at)

    async def _store_output(self, out: Output, msg: Msg, accepted_at: float = 0.0) -> None:
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        try:
            await bus.publish(self.c.agent.js, names.output_subject(out.call_id, out.attempt),
                              encode(out), msg_id=f"{out.input_id}:{out.attempt}", headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                self.c.log.error("output_store_failed", call_id=out.call_id, error=repr(e))
                await acks.settle(msg, Nak(1.0))
                return
            self.c.log.info("duplicate_output_dropped", call_id=out.call_id, attempt=out.attempt)
        except Exception as e:
            self.c.log.error("output_store_failed", call_id=out.call_id, error=repr(e))
            await acks.settle(msg, Nak(1.0))
            return
        else:  # stored by this container: the call's one result (a duplicate is not)
            self.c.meter.count(out.status)
            self.c.observe(out, accepted_at)
        self.c.agent.ack_later(msg)

    async def finish(self, exit_code: int | None) -> None:
        """The process is gone while inputs were running: answer or hand them back."""
        if self.running and self.c._pulled is not None:
            self.c._pulled.crashed()
        for inf in list(self.in_flight.values()):
            ran = inf.running
            self.release(inf)
            if not ran:  # waiting in line: it never ran, another container runs it
                await acks.settle(inf.msg, Nak())
                continue
            if inf.timed_out:
                out = self._failure(inf, "timeout", "FunctionTimeoutError",
                                    f"function {self.c.fn.name!r} timed out after "
                                    f"{self.c.fn.timeout:g} s")
            elif why := self._killed_because():
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"container killed: {why}")
            else:
                out = self._failure(inf, "failure", "burst.exception.ExecutionError",
                                    f"container {self.c.id} exited with code {exit_code} "
                                    "while running the call")
            await self._complete(out, inf)
        self.in_flight.clear()

    def _killed_because(self) -> str:
        """Why the runtime killed the process ("out of memory (limit 512 MiB)"), or ""."""
        why = self.c.handle.exit_reason() if self.c.handle is not None else ""
        if why.startswith("out of memory"):
            self.c.stop_reason = self.c.stop_reason or "oom"
            self.c.detail = self.c.detail or f"container killed: {why}"
        return why

    def _failure(self, inf: InFlight, status: str, etype: str, message: str) -> Output:
        return Output(call_id=inf.inp.call_id, input_id=inf.inp.input_id, attempt=inf.inp.attempt,
                      attempt_token=inf.inp.attempt_token, status=status,  # type: ignore[arg-type]
                      error_type=etype, error_message=message, container_id=self.c.id,
                      started_at=inf.started, finished_at=time.time(),
                      workspace=inf.inp.workspace)

