"""The shim: runs inside every container, between the agent and the user's code.

It connects to the agent's per-container unix socket, imports the user's module from the
source bundle (its working directory), reports ``Ready``, then runs the inputs the agent
relays, one at a time, answering each with ``InputDone``. What user code prints goes to
the agent as ``Log`` frames tagged with the current call id.

This module is on the cold-start path: it imports only the standard library, msgspec,
cloudpickle and burst's light modules; never typer, rich, fastapi or nats.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from burst import _protocol as proto
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


class LogWriter(io.TextIOBase):
    """A text stream that sends each complete line to the agent."""

    def __init__(self, chan: Channel, stream: str, state: ShimState) -> None:
        self.chan = chan
        self.stream = stream
        self.state = state
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                self._emit(line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                line, self._buf = self._buf, ""
                self._emit(line)

    def _emit(self, line: str) -> None:
        self.state.log_lines += 1
        self.chan.send(proto.Log(stream=self.stream, line=line, call_id=self.state.call_id))  # type: ignore[arg-type]


class ShimState:
    call_id = ""
    log_lines = 0


def _resolve(module_name: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    # A burst Function wraps the user's callable; run the callable itself.
    return getattr(obj, "raw_f", obj)


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


def run_input(fn: Any, msg: proto.RunInput, state: ShimState) -> proto.InputDone:
    state.call_id, state.log_lines = msg.call_id, 0
    started = time.time()
    as_json = msg.payload_format == "json"
    try:
        args, kwargs = decode_args(msg.payload, as_json)
        result = fn(*args, **kwargs)
        done = proto.InputDone(input_id=msg.input_id, status="success",
                               payload=encode_result(result, as_json))
    except Exception as exc:  # the user's error travels back to the caller
        payload, name, message, trace = serialize_exception(exc)
        done = proto.InputDone(input_id=msg.input_id, status="failure",
                               payload=b"" if as_json else payload,
                               error_type=name, error_message=message, traceback=trace)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    done.log_lines = state.log_lines
    done.started_at, done.finished_at = started, time.time()
    state.call_id = ""
    return done


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
        fn = _resolve(module_name, qualname)
    except BaseException as exc:
        _, name, message, trace = serialize_exception(exc)  # type: ignore[arg-type]
        chan.send(proto.StartupFailed(error_type=name, error_message=message, traceback=trace))
        sys.exit(1)
    chan.send(proto.Ready(pid=os.getpid()))
    while True:
        msg = chan.recv()
        if msg is None or isinstance(msg, proto.Shutdown):
            break
        if isinstance(msg, proto.RunInput):
            chan.send(run_input(fn, msg, state))
    sys.stdout.flush()
    sys.stderr.flush()
