"""The shim: runs inside every container, between the agent and the user's code.

It connects to the agent's per-container unix socket, imports the user's module from the
source bundle (its working directory), reports ``Ready``, then runs the inputs the agent
relays, one at a time, answering each with ``InputDone``. What user code prints goes to
the agent as ``Log`` frames tagged with the current call id.

This module is on the cold-start path: it imports only the standard library, msgspec,
cloudpickle and burst's light modules; never typer, rich, fastapi or nats.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from burst import _protocol as proto

if TYPE_CHECKING:  # imported lazily below: only concurrent or async functions need them
    import asyncio
    import concurrent.futures
from burst._serialization import deserialize, serialize, serialize_exception


class Channel:
    """Frames over the agent's socket; writes are serialised by a lock."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, msg: Any) -> None:
        data = proto.frame(msg)
        with self._lock:
            self.sock.sendall(data)

    def recv(self) -> Any:
        header = self.rfile.read(4)
        if len(header) < 4:
            return None
        body = self.rfile.read(proto.frame_length(header))
        return proto.to_shim_decoder.decode(body)


#: The call the current thread or task works for; what it prints is tagged with it.
current_call: contextvars.ContextVar[str] = contextvars.ContextVar("burst_call", default="")


class LogWriter(io.TextIOBase):
    """A text stream that sends each complete line to the agent, tagged with the call
    that printed it (per thread or asyncio task, so concurrent inputs keep their lines)."""

    def __init__(self, chan: Channel, stream: str, state: ShimState) -> None:
        self.chan = chan
        self.stream = stream
        self.state = state
        self._bufs: dict[str, str] = {}
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        call = current_call.get()
        with self._lock:
            buf = self._bufs.get(call, "") + s
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                self._emit(line, call)
            self._bufs[call] = buf
        return len(s)

    def flush(self) -> None:
        call = current_call.get()
        with self._lock:
            buf = self._bufs.pop(call, "")
            if buf:
                self._emit(buf, call)

    def _emit(self, line: str, call: str) -> None:
        self.state.count(call)
        self.chan.send(proto.Log(stream=self.stream, line=line, call_id=call))  # type: ignore[arg-type]


class ShimState:
    """Lines printed per call (so the caller's log follower knows how many to expect)."""

    def __init__(self) -> None:
        self._lines: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, call_id: str) -> None:
        if call_id:
            with self._lock:
                self._lines[call_id] = self._lines.get(call_id, 0) + 1

    def take(self, call_id: str) -> int:
        with self._lock:
            return self._lines.pop(call_id, 0)


def _resolve_object(module_name: str, qualname: str) -> Any:
    """The object ``qualname`` names in the user's module: a burst Function wrapping the
    user's callable (its ``raw_f`` is what runs), or a plain callable."""
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def decode_args(payload: bytes, as_json: bool) -> tuple[list[Any], dict[str, Any]]:
    """Arguments: cloudpickle from Python callers, ``{"args", "kwargs"}`` JSON from others."""
    if not as_json:
        args, kwargs = deserialize(payload)
        return args, kwargs
    body = json.loads(payload)
    return list(body.get("args", [])), dict(body.get("kwargs", {}))


def encode_result(result: Any, as_json: bool) -> bytes:
    if not as_json:
        return serialize(result)
    try:
        return json.dumps(result).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"the result ({type(result).__name__}) cannot be sent as JSON to "
                        f"this JSON caller: {e}") from None


def _done(msg: proto.RunInput, started: float, result: Any = None,
          exc: BaseException | None = None) -> proto.InputDone:
    as_json = msg.payload_format == "json"
    if exc is None:
        try:
            return proto.InputDone(input_id=msg.input_id, status="success",
                                   payload=encode_result(result, as_json), started_at=started,
                                   finished_at=time.time())
        except Exception as e:  # the result cannot travel back
            exc = e
    payload, name, message, trace = serialize_exception(exc)
    return proto.InputDone(input_id=msg.input_id, status="failure",
                           payload=b"" if as_json else payload, error_type=name,
                           error_message=message, traceback=trace, started_at=started,
                           finished_at=time.time())


class Runner:
    """Runs inputs: one at a time on the main thread, or ``max_inputs`` at once on threads
    (sync functions) or as tasks of one event loop (async functions)."""

    def __init__(self, fn: Any, chan: Channel, state: ShimState, max_inputs: int) -> None:
        self.fn = fn
        self.chan = chan
        self.state = state
        self.is_async = inspect.iscoroutinefunction(fn)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: dict[str, concurrent.futures.Future[None]] = {}
        if self.is_async:
            import asyncio

            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="burst-inputs",
                             daemon=True).start()
        elif max_inputs > 1:
            import concurrent.futures

            self.pool = concurrent.futures.ThreadPoolExecutor(max_inputs,
                                                              thread_name_prefix="burst-input")

    def submit(self, msg: proto.RunInput) -> None:
        if self.loop is not None:
            import asyncio

            fut = asyncio.run_coroutine_threadsafe(self._run_async(msg), self.loop)
            self.tasks[msg.input_id] = fut
            fut.add_done_callback(lambda _: self.tasks.pop(msg.input_id, None))
        elif self.pool is not None:
            self.pool.submit(self._run_sync, msg)
        else:
            self._run_sync(msg)

    def cancel(self, input_id: str) -> None:
        fut = self.tasks.get(input_id)
        if fut is not None:
            fut.cancel()

    def _finish(self, msg: proto.RunInput, done: proto.InputDone) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        done.log_lines = self.state.take(msg.call_id)
        self.chan.send(done)

    def _run_sync(self, msg: proto.RunInput) -> None:
        current_call.set(msg.call_id)
        started = time.time()
        try:
            args, kwargs = decode_args(msg.payload, msg.payload_format == "json")
            done = _done(msg, started, self.fn(*args, **kwargs))
        except Exception as exc:  # the user's error travels back to the caller
            done = _done(msg, started, exc=exc)
        self._finish(msg, done)

    async def _run_async(self, msg: proto.RunInput) -> None:
        import asyncio

        current_call.set(msg.call_id)
        started = time.time()
        try:
            args, kwargs = decode_args(msg.payload, msg.payload_format == "json")
            done = _done(msg, started, await self.fn(*args, **kwargs))
        except asyncio.CancelledError as exc:
            done = _done(msg, started, exc=exc)
        except Exception as exc:
            done = _done(msg, started, exc=exc)
        self._finish(msg, done)


def _max_inputs(obj: Any) -> int:
    spec = getattr(obj, "spec", None)
    return max(1, int(getattr(spec, "max_inputs", 1) or 1))


def main() -> None:
    path = os.environ["BURST_SHIM_SOCKET"]
    module_name = os.environ["BURST_SHIM_MODULE"]
    qualname = os.environ["BURST_SHIM_QUALNAME"]
    chan = Channel(path)
    state = ShimState()
    sys.stdout = LogWriter(chan, "stdout", state)
    sys.stderr = LogWriter(chan, "stderr", state)
    # SIGTERM ends the container like a Shutdown frame would: let Python unwind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.path.insert(0, os.getcwd())
    try:
        obj = _resolve_object(module_name, qualname)
        fn = getattr(obj, "raw_f", obj)
    except BaseException as exc:
        _, name, message, trace = serialize_exception(exc)  # type: ignore[arg-type]
        chan.send(proto.StartupFailed(error_type=name, error_message=message, traceback=trace))
        sys.exit(1)
    runner = Runner(fn, chan, state, _max_inputs(obj))
    chan.send(proto.Ready(pid=os.getpid()))
    while True:
        msg = chan.recv()
        if msg is None or isinstance(msg, proto.Shutdown):
            break
        if isinstance(msg, proto.RunInput):
            runner.submit(msg)
        elif isinstance(msg, proto.CancelInput):
            runner.cancel(msg.input_id)
    sys.stdout.flush()
    sys.stderr.flush()
