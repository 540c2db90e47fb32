"""Following an app's remote output and printing it, tagged with the function's name."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, TextIO

from burst.config import seconds_setting

if TYPE_CHECKING:
    from burst.client import Client

#: How long ``.remote()`` waits, at most, for the lines its call printed to be shown
#: before it returns (they come on the app's log stream, apart from the result).
LOG_WAIT_SETTING = "BURST_LOG_WAIT"
LOG_WAIT_DEFAULT = 2.0

_print_lock = threading.Lock()


def print_line(stream: TextIO, text: str) -> None:
    """Write one whole line; lines from the follower never split the caller's lines."""
    inner = getattr(stream, "_inner", stream)
    with _print_lock:
        inner.write(text + "\n")
        inner.flush()


class LogFollower(threading.Thread):
    """Streams ``GET /v1/apps/{app}/logs`` in a background thread."""

    def __init__(self, client: Client, app: str, tag: bool = True) -> None:
        super().__init__(name=f"burst-logs-{app}", daemon=True)
        self.client = client
        self.app = app
        self.tag = tag
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        #: Lines printed per (call id, attempt): a retried call's attempts print apart.
        self._counts: dict[tuple[str, int], int] = defaultdict(int)
        self._cond = threading.Condition()
        self._conn: http.client.HTTPConnection | None = None
        self.error: str = ""

    def run(self) -> None:
        c = self.client
        try:
            kind = (http.client.HTTPSConnection if c._scheme == "https"
                    else http.client.HTTPConnection)
            self._conn = kind(c._host, c._port, timeout=30)
            self._conn.request("GET", f"/v1/apps/{self.app}/logs",
                               headers={"Authorization": f"Bearer {c.token}"})
            resp = self._conn.getresponse()
            if resp.status != 200:
                self.error = f"log stream refused (HTTP {resp.status})"
                self.subscribed.set()
                return
            while not self._stopping.is_set():
                raw = resp.readline()
                if not raw:
                    return
                self._on_line(json.loads(raw))
        except Exception as e:  # the stream ends with the app; errors only cost log lines
            if not self._stopping.is_set():
                self.error = f"log stream ended: {e}"
        finally:
            self.subscribed.set()

    def _on_line(self, item: dict[str, object]) -> None:
        kind = item.get("type")
        if kind == "subscribed":
            self.subscribed.set()
            return
        if kind != "log":
            return
        stream = sys.stderr if item.get("stream") == "stderr" else sys.stdout
        text = str(item.get("line", ""))
        print_line(stream, f"[{item.get('function')}] {text}" if self.tag else text)
        call_id = str(item.get("call_id") or "")
        if call_id:
            attempt = item.get("attempt")
            key = (call_id, attempt if isinstance(attempt, int) else 1)
            with self._cond:
                self._counts[key] += 1
                self._cond.notify_all()

    def wait_for(self, call_id: str, lines: int, attempt: int = 1,
                 timeout: float | None = None) -> None:
        """Wait until ``lines`` lines of ``attempt`` of ``call_id`` have been printed, for
        ``timeout`` seconds at most (default: ``BURST_LOG_WAIT``, 2 s); lines of earlier
        attempts do not count towards them."""
        if lines <= 0 or not self.is_alive():
            return
        if timeout is None:
            timeout = seconds_setting(LOG_WAIT_SETTING, LOG_WAIT_DEFAULT)
        key = (call_id, attempt)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counts.get(key, 0) < lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
            for k in [k for k in self._counts if k[0] == call_id and k[1] <= attempt]:
                del self._counts[k]

    def stop(self) -> None:
        self._stopping.set()
        if self._conn is not None:
            try:
                if self._conn.sock is not None:
                    self._conn.sock.shutdown(2)
            except OSError:
                pass
            self._conn.close()


class LineSafeStream:
    """Wraps stdout/stderr so the caller's lines and the follower's never interleave
    within a line: text is held per thread until its newline, then written whole."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._partial = threading.local()

    def write(self, s: str) -> int:
        buf = getattr(self._partial, "buf", "") + s
        if "\n" in buf:
            head, _, tail = buf.rpartition("\n")
            with _print_lock:
                self._inner.write(head + "\n")
                self._inner.flush()
            buf = tail
        self._partial.buf = buf
        return len(s)

    def flush(self) -> None:
        buf = getattr(self._partial, "buf", "")
        if buf:
            with _print_lock:
                self._inner.write(buf)
            self._partial.buf = ""
        self._inner.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)
