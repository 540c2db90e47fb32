"""The shim: runs inside every container, between the agent and the user's code.

It connects to the agent's per-container unix socket, imports the user's module from the
source bundle (its working directory), reports ``Ready``, then runs the inputs the agent
relays, one at a time, answering each with ``InputDone``. What user code prints goes to
the agent as ``Log`` frames tagged with the current call id.

This module is on the cold-start path: it imports only the standard library, msgspec,
cloudpickle and burst's light modules; never typer, rich, fastapi or nats.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import io
import json
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from burst import _context, wire

if TYPE_CHECKING:  # imported lazily below: only concurrent or async functions need them
    import asyncio
    import concurrent.futures
from burst._serialization import deserialize, serialize, serialize_exception


class Channel:
    """Frames over the agent's socket; writes are serialised by a lock.

    There is no reader thread: whichever thread needs a frame reads the socket itself,
    one at a time (leader/follower). The main loop reads when it waits for its next
    input, a thread waiting for a platform call's answer reads while the main loop runs
    user code; a frame for someone else is handed over (a response to its waiter, any
    other frame to the main loop). So an input reaches the code that runs it without a
    thread switch, and platform answers still arrive while user code waits for them.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._lock = threading.Lock()  # writes
        self._cv = threading.Condition()  # everything below
        self._reading = False
        self._closed = False
        self._buf = bytearray()
        self._frames: collections.deque[Any] = collections.deque()  # for the main loop
        self._next_id = 0
        self._pending: dict[int, list[Any]] = {}

    def request(self, kind: str, body: bytes, timeout: float | None = None) -> bytes:
        """A platform call through the agent (see ``burst._context``); blocks this thread."""
        from burst.exception import UnavailableError, from_api

        slot: list[Any] = [None]
        with self._cv:
            self._next_id += 1
            req_id = self._next_id
            self._pending[req_id] = slot
        self.send(wire.PlatformRequest(req_id=req_id, kind=kind, body=body))  # type: ignore[arg-type]
        if not self._pump(lambda: slot[0] is not None,
                          timeout if timeout is not None else 120.0):
            with self._cv:
                self._pending.pop(req_id, None)
            if self._closed:
                raise UnavailableError(f"the agent closed the connection during a {kind} request")
            raise UnavailableError(f"the agent did not answer a {kind} request in time")
        resp: wire.PlatformResponse = slot[0]
        if resp.error_type:
            raise from_api(resp.error_type, resp.error_message)
        return resp.body

    def send(self, msg: Any) -> None:
        data = wire.frame(msg)
        with self._lock:
            self.sock.sendall(data)

    def send_many(self, msgs: list[Any]) -> None:
        """Several frames in one write (a small web response's start, body and end)."""
        data = b"".join(wire.frame(m) for m in msgs)
        with self._lock:
            self.sock.sendall(data)

    def next_frame(self) -> Any:
        """The main loop's next frame; ``None`` once the agent closed the connection."""
        self._pump(lambda: bool(self._frames), None)
        with self._cv:
            return self._frames.popleft() if self._frames else None

    def _pump(self, ready: Any, timeout: float | None) -> bool:
        """Read frames (or wait for the thread reading them) until ``ready()``; False on
        timeout or a closed connection."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not ready():
                if self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if self._reading:  # another thread reads: it hands over what is ours
                    self._cv.wait(left)
                    continue
                self._reading = True
                self._cv.release()
                try:
                    frame = self._read(left)
                finally:
                    self._cv.acquire()
                    self._reading = False
                    self._cv.notify_all()
                if frame is _NOTHING:
                    continue
                if frame is None:
                    self._closed = True
                elif isinstance(frame, wire.PlatformResponse):
                    slot = self._pending.pop(frame.req_id, None)
                    if slot is not None:
                        slot[0] = frame
                else:
                    self._frames.append(frame)
            return True

    def _read(self, timeout: float | None) -> Any:
        """One whole frame, ``None`` at end of stream, ``_NOTHING`` when none came within
        ``timeout``. Bytes are consumed only once a whole frame is there."""
        while True:
            if len(self._buf) >= 4:
                n = wire.frame_length(bytes(self._buf[:4]))
                if len(self._buf) >= 4 + n:
                    body = bytes(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    return wire.to_shim_decoder.decode(body)
            if timeout is not None:
                ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
                if not ready:
                    return _NOTHING
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return None
            if not chunk:
                return None
            self._buf += chunk


#: ``Channel._read``'s "nothing arrived in time".
_NOTHING = object()


#: The call the current thread or task works for; what it prints is tagged with it.
current_call = _context.current_call


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
        self.chan.send(wire.Log(stream=self.stream, line=line, call_id=call))  # type: ignore[arg-type]


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
    qualname, _, variant = qualname.partition("@")  # ``Model@name``: a Cls variant
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj.variant(variant) if variant else obj


def decode_args(payload: bytes,
                as_json: bool) -> tuple[list[Any], dict[str, Any], str, dict[str, Any]]:
    """(args, kwargs, method, params) of a call: cloudpickle from Python callers,
    ``{"args", "kwargs"[, "method", "params"]}`` JSON from others. ``method`` is "" for a
    plain function."""
    if not as_json:
        parts = deserialize(payload)
        if len(parts) == 4:
            return list(parts[0]), dict(parts[1]), str(parts[2]), dict(parts[3])
        return list(parts[0]), dict(parts[1]), "", {}
    body = json.loads(payload)
    return (list(body.get("args", [])), dict(body.get("kwargs", {})),
            str(body.get("method") or ""), dict(body.get("params") or {}))


class Target:
    """What inputs call: the user's function, or methods of instances of the user's class
    (one instance per parameter set; the one without parameters is made at start)."""

    def __init__(self, obj: Any) -> None:
        spec = getattr(obj, "spec", None)
        self.user_cls: type | None = obj.user_cls if getattr(spec, "is_class", False) else None
        self.fn = None if self.user_cls is not None else getattr(obj, "raw_f", obj)
        #: Cls.with_batching: every method batched alike.
        self.batching: tuple[int, int] | None = getattr(obj, "_batching", None)
        self.instances: dict[str, Any] = {}
        self._lock = threading.Lock()
        if self.user_cls is not None:
            from burst import cls as cls_mod

            required = [k for k, v in cls_mod.parameters_of(self.user_cls).items()
                        if v is cls_mod._MISSING]
            if not required:
                self.instance({})  # @enter runs before the container reports ready

    def instance(self, params: dict[str, Any]) -> Any:
        from burst import cls as cls_mod

        key = repr(sorted(params.items()))
        with self._lock:
            inst = self.instances.get(key)
            if inst is None:
                assert self.user_cls is not None
                inst = self.instances[key] = cls_mod.make_instance(self.user_cls, params)
        return inst

    def callable_for(self, method: str, params: dict[str, Any]) -> Any:
        if self.user_cls is None:
            if method:
                raise TypeError(f"{self.fn!r} is a function, not a class: it has no method "
                                f"{method!r}")
            return self.fn
        if not method:
            raise TypeError(f"{self.user_cls.__name__} is a class: call one of its methods, "
                            f"e.g. {self.user_cls.__name__}().method.remote(...)")
        target = getattr(self.instance(params), method, None)
        if target is None or not getattr(target, "__burst_method__", False):
            raise AttributeError(f"{self.user_cls.__name__} has no @burst.method() {method!r}")
        return target

    def close(self) -> None:
        """Run ``@exit`` of every instance (container shutdown)."""
        from burst import cls as cls_mod

        for inst in list(self.instances.values()):
            try:
                cls_mod.run_exit(inst)
            except Exception:
                import traceback

                traceback.print_exc()


def encode_result(result: Any, as_json: bool) -> bytes:
    if not as_json:
        return serialize(result)
    try:
        return json.dumps(result).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"the result ({type(result).__name__}) cannot be sent as JSON to "
                        f"this JSON caller: {e}") from None


def _done(msg: wire.RunInput, started: float, result: Any = None,
          exc: BaseException | None = None) -> wire.InputDone:
    as_json = msg.payload_format == "json"
    if exc is None:
        try:
            return wire.InputDone(input_id=msg.input_id, status="success",
                                   payload=encode_result(result, as_json), started_at=started,
                                   finished_at=time.time())
        except Exception as e:  # the result cannot travel back
            exc = e
    payload, name, message, trace = serialize_exception(exc)
    return wire.InputDone(input_id=msg.input_id, status="failure",
                           payload=b"" if as_json else payload, error_type=name,
                           error_message=message, traceback=trace, started_at=started,
                           finished_at=time.time())


class Batcher:
    """Gathers inputs of a ``@burst.batched`` function into one call: up to the batch
    size, or what came within ``wait_ms`` of the first; each caller gets its own item."""

    def __init__(self, runner: Runner, fn: Any, max_size: int, wait_ms: int) -> None:
        self.runner = runner
        self.fn = fn
        self.max_size = max_size
        self.wait = wait_ms / 1000
        self.pending: queue.SimpleQueue[tuple[wire.RunInput, list[Any], dict[str, Any]]] = (
            queue.SimpleQueue())
        threading.Thread(target=self._loop, name="burst-batcher", daemon=True).start()

    def submit(self, msg: wire.RunInput, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.pending.put((msg, args, kwargs))

    def _loop(self) -> None:
        while True:
            batch = [self.pending.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.max_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self.pending.get(timeout=left))
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[tuple[wire.RunInput, list[Any], dict[str, Any]]]) -> None:
        started = time.time()
        try:
            arity = {(len(a), tuple(sorted(k))) for _, a, k in batch}
            if len(arity) != 1:
                raise TypeError("inputs of one batch must pass the same arguments")
            n_args, kw_names = arity.pop()
            args = [[a[i] for _, a, _ in batch] for i in range(n_args)]
            kwargs = {name: [k[name] for _, _, k in batch] for name in kw_names}
            if inspect.iscoroutinefunction(self.fn):
                import asyncio

                results = asyncio.run_coroutine_threadsafe(
                    self.fn(*args, **kwargs), self.runner._event_loop()).result()
            else:
                results = self.fn(*args, **kwargs)
            results = list(results)
            if len(results) != len(batch):
                raise ValueError(f"a batched function returned {len(results)} results for "
                                 f"{len(batch)} inputs")
        except Exception as exc:
            for msg, _, _ in batch:
                self.runner._finish(msg, _done(msg, started, exc=exc))
            return
        for (msg, _, _), result in zip(batch, results, strict=True):
            self.runner._finish(msg, _done(msg, started, result))


class Runner:
    """Runs inputs: one at a time on the main thread, or ``max_inputs`` at once on threads
    (sync callables) or as tasks of one event loop (async callables)."""

    def __init__(self, target: Target, chan: Channel, state: ShimState, max_inputs: int) -> None:
        self.target = target
        self.chan = chan
        self.state = state
        self.max_inputs = max_inputs
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: dict[str, concurrent.futures.Future[None]] = {}
        self.batchers: dict[Any, Batcher] = {}

    def in_order(self) -> bool:
        """Whether inputs run one at a time, in the order they come: on the main thread,
        each before the next frame is read (a plain function, not async, not batched,
        with max_inputs 1). Then inputs sent ahead wait in line in the socket."""
        fn = self.target.fn
        return (self.max_inputs == 1 and fn is not None and self.target.batching is None
                and getattr(fn, "__burst_batched__", None) is None
                and not inspect.iscoroutinefunction(fn) and not inspect.isasyncgenfunction(fn))

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            import asyncio

            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="burst-inputs",
                             daemon=True).start()
        return self.loop

    def submit(self, msg: wire.RunInput) -> None:
        started = time.time()
        try:
            args, kwargs, method, params = decode_args(msg.payload, msg.payload_format == "json")
            _context.current_input.set(msg.input_id)
            current_call.set(msg.call_id)  # @enter of a new instance prints for this call
            fn = self.target.callable_for(method, params)
        except Exception as exc:
            self._finish(msg, _done(msg, started, exc=exc))
            return
        batching = getattr(fn, "__burst_batched__", None) or self.target.batching
        if batching is not None:
            # One batcher per function, or per method of one instance.
            key = (getattr(fn, "__func__", fn), id(getattr(fn, "__self__", None)))
            if key not in self.batchers:
                self.batchers[key] = Batcher(self, fn, *batching)
            self.batchers[key].submit(msg, args, kwargs)
        elif inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            import asyncio

            fut = asyncio.run_coroutine_threadsafe(self._run_async(msg, fn, args, kwargs),
                                                   self._event_loop())
            self.tasks[msg.input_id] = fut
            fut.add_done_callback(lambda _: self.tasks.pop(msg.input_id, None))
        elif self.max_inputs > 1:
            if self.pool is None:
                import concurrent.futures

                self.pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_inputs, thread_name_prefix="burst-input")
            self.pool.submit(self._run_sync, msg, fn, args, kwargs)
        else:
            self._run_sync(msg, fn, args, kwargs)

    def cancel(self, input_id: str) -> None:
        fut = self.tasks.get(input_id)
        if fut is not None:
            fut.cancel()

    def _finish(self, msg: wire.RunInput, done: wire.InputDone) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        done.log_lines = self.state.take(msg.call_id)
        self.chan.send(done)

    def _stream(self, msg: wire.RunInput, items: Any) -> int:
        """Send each item a generator yields; returns how many."""
        as_json = msg.payload_format == "json"
        n = 0
        for n, item in enumerate(items, 1):
            self.chan.send(wire.StreamItem(input_id=msg.input_id, index=n - 1,
                                            payload=encode_result(item, as_json)))
        return n

    def _run_sync(self, msg: wire.RunInput, fn: Any, args: list[Any],
                  kwargs: dict[str, Any]) -> None:
        current_call.set(msg.call_id)
        _context.current_input.set(msg.input_id)
        started = time.time()
        try:
            result = fn(*args, **kwargs)
            if inspect.isgenerator(result):
                result = self._stream(msg, result)
            done = _done(msg, started, result)
        except Exception as exc:  # the user's error travels back to the caller
            done = _done(msg, started, exc=exc)
        self._finish(msg, done)

    async def _run_async(self, msg: wire.RunInput, fn: Any, args: list[Any],
                         kwargs: dict[str, Any]) -> None:
        import asyncio

        current_call.set(msg.call_id)
        _context.current_input.set(msg.input_id)
        started = time.time()
        try:
            if inspect.isasyncgenfunction(fn):
                n, as_json = 0, msg.payload_format == "json"
                async for item in fn(*args, **kwargs):
                    self.chan.send(wire.StreamItem(input_id=msg.input_id, index=n,
                                                    payload=encode_result(item, as_json)))
                    n += 1
                done = _done(msg, started, n)
            else:
                done = _done(msg, started, await fn(*args, **kwargs))
        except asyncio.CancelledError as exc:
            done = _done(msg, started, exc=exc)
        except Exception as exc:
            done = _done(msg, started, exc=exc)
        self._finish(msg, done)


def _max_inputs(obj: Any) -> int:
    spec = getattr(obj, "spec", None)
    return max(1, int(getattr(spec, "max_inputs", 1) or 1))


def main() -> None:
    booted_at = time.time()
    path = os.environ["BURST_SHIM_SOCKET"]
    module_name = os.environ["BURST_SHIM_MODULE"]
    qualname = os.environ["BURST_SHIM_QUALNAME"]
    chan = Channel(path)
    _context.platform = chan
    interval = float(os.environ.get("BURST_SHIM_HEARTBEAT_INTERVAL", "1.0"))

    def alive() -> None:
        while True:
            time.sleep(interval)
            chan.send(wire.Alive())

    threading.Thread(target=alive, name="burst-shim-alive", daemon=True).start()
    state = ShimState()
    sys.stdout = LogWriter(chan, "stdout", state)
    sys.stderr = LogWriter(chan, "stderr", state)
    # SIGTERM ends the container like a Shutdown frame would: let Python unwind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.path.insert(0, os.getcwd())
    try:
        obj = _resolve_object(module_name, qualname)
        imported_at = time.time()
        target = Target(obj)
    except BaseException as exc:
        _, name, message, trace = serialize_exception(exc)
        chan.send(wire.StartupFailed(error_type=name, error_message=message, traceback=trace))
        sys.exit(1)
    runner = Runner(target, chan, state, _max_inputs(obj))
    web_host = None
    endpoints = getattr(getattr(obj, "spec", None), "web", None)
    if endpoints:  # only web functions import a web framework (see _shim/web.py)
        try:
            from burst._shim import web

            web_host = web.WebHost(endpoints, target, chan, runner._event_loop())
        except BaseException as exc:
            _, name, message, trace = serialize_exception(exc)
            chan.send(wire.StartupFailed(error_type=name, error_message=message,
                                         traceback=trace))
            sys.exit(1)
    # Inputs wait in line only for a plain function (a web one serves requests too).
    chan.send(wire.Ready(pid=os.getpid(), in_order=runner.in_order() and web_host is None,
                         booted_at=booted_at, imported_at=imported_at, entered_at=time.time()))
    try:
        while True:
            msg = chan.next_frame()
            if msg is None or isinstance(msg, wire.Shutdown):
                break
            if isinstance(msg, wire.RunInput):
                runner.submit(msg)
            elif isinstance(msg, wire.CancelInput):
                runner.cancel(msg.input_id)
            elif web_host is not None and isinstance(msg, wire.WEB_TO_SHIM):
                web_host.on_frame(msg)
    finally:
        # Scale-down, preemption (SIGTERM) or shutdown: @exit runs within the grace period.
        target.close()
    sys.stdout.flush()
    sys.stderr.flush()
