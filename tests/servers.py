"""Start real nats-server and redis-server processes for tests, on free ports.

Without the binaries the fixtures skip, except when ``CI`` is set: then they fail, so a
missing install step can never turn into a silently skipped test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(what: str) -> None:
    msg = f"{what} not found: run `make install`"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def nats_binary() -> str | None:
    venv_bin = Path(sys.executable).parent / "nats-server"
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which("nats-server")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, port: int,
                 args: list[str] | None = None, health: str = "") -> None:
        self.proc = proc
        self.url = url
        self.port = port
        self._args = args or []
        self._health = health

    def restart(self, kill: bool = False) -> None:
        """Stop (with ``kill``, SIGKILL: no goodbye to its clients), then start again on the
        same port and storage (nats-server only): clients reconnect; what lived only in
        the server's memory is gone."""
        assert self._args, "only a server started with its arguments can restart"
        if kill:
            self.proc.kill()
            self.proc.wait(5)
        self.stop()
        self.proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not _healthy(self.proc, self._health):
            self.stop()
            raise RuntimeError("nats-server did not come back within 15 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_nats(store: Path, attempts: int = 3) -> Server:
    binary = nats_binary()
    if not binary:
        _missing("nats-server")
    assert binary is not None
    store.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        # free_port() can race with another process taking the port before nats binds it:
        # a server that exits at once is retried on new ports.
        port, mon = free_port(), free_port()
        args = [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(mon), "-js", "-sd",
                str(store)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        health = f"http://127.0.0.1:{mon}/healthz"
        if _healthy(proc, health):
            return Server(proc, f"nats://127.0.0.1:{port}", port, args, health)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            break  # it ran but never became healthy: not a port race
    raise RuntimeError("nats-server did not become healthy within 15 s")


def _healthy(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Whether nats-server answers ``url`` (its /healthz) within 15 s, while it runs."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_redis(attempts: int = 3) -> Server:
    binary = shutil.which("redis-server")
    if not binary:
        _missing("redis-server")
    assert binary is not None
    for _ in range(attempts):
        port = free_port()  # retried on a new port if another process took this one
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return Server(proc, f"redis://127.0.0.1:{port}/0", port)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            break
    raise RuntimeError("redis-server did not become healthy within 15 s")
