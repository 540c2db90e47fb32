"""A client's heartbeat: what keeps its ephemeral apps, Dicts and Queues alive.

``burst run``, ``with app.run():`` and ``Dict.ephemeral()``/``Queue.ephemeral()`` hold the
process's heartbeat while they last. One client id per cluster and token in a process; a
thread beats every ``BURST_CLIENT_HEARTBEAT_INTERVAL`` seconds (default 3) through
whichever gateway answers, and a failed beat is only retried at the next one. When this
process dies, or loses the cluster, its beats stop and the scheduler stops what it owns
after the cluster's ``BURST_CLIENT_TIMEOUT`` (default 10 s).

Example::

    with _heartbeat.held(client) as client_id:
        client.deploy(wire.DeployRequest(..., ephemeral=True, client_id=client_id))
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from burst.exception import InvalidError

if TYPE_CHECKING:
    from burst.client import Client

INTERVAL_ENV = "BURST_CLIENT_HEARTBEAT_INTERVAL"
DEFAULT_INTERVAL = 3.0


def interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 60.0:
        raise InvalidError(f"{INTERVAL_ENV}={raw!r}: expected seconds between 0.05 and 60")
    return value


#: After a failed beat the next one comes after this fraction of the interval.
RETRY_FRACTION = 6


class Heartbeat:
    def __init__(self, url: str, token: str) -> None:
        self.client_id = "cl-" + secrets.token_hex(8)
        self.url, self.token = url, token
        self.interval = interval()
        self.beats = 0
        self._holders = 0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _client(self) -> Client:
        from burst.client import Client

        # A short timeout, and no retry: a beat stuck on a dead gateway must not hold back
        # the next one (which is the retry).
        return Client(self.url, self.token, timeout=max(2 * self.interval, 5.0),
                      unavailable_retry=0)

    def _beat(self, client: Client) -> None:
        self.beats += 1
        client.request("PUT", f"/v1/clients/{self.client_id}/heartbeat",
                       params={"seq": self.beats})

    def _run(self, stop: threading.Event) -> None:
        client = self._client()
        wait = self.interval
        while not stop.wait(wait):
            try:
                self._beat(client)
                wait = self.interval
            except Exception:  # (a NATS leader election, a gateway restarting): soon again
                wait = self.interval / RETRY_FRACTION

    def acquire(self) -> str:
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                try:
                    self._beat(self._client())  # recorded before anything it keeps alive
                except BaseException:
                    self._holders -= 1
                    raise
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                name="burst-heartbeat", daemon=True)
                self._thread.start()
        return self.client_id

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders > 0 or self._stop is None:
                return
            self._stop.set()
            self._stop = self._thread = None
        with contextlib.suppress(Exception):
            self._client().request("DELETE", f"/v1/clients/{self.client_id}")


_beats: dict[tuple[str, str], Heartbeat] = {}
_beats_lock = threading.Lock()


def of(client: Client) -> Heartbeat:
    """The process's heartbeat for ``client``'s cluster and token."""
    with _beats_lock:
        hb = _beats.get((client.url, client.token))
        if hb is None:
            hb = _beats[(client.url, client.token)] = Heartbeat(client.url, client.token)
        return hb


@contextlib.contextmanager
def held(client: Client) -> Iterator[str]:
    """Keep the process's heartbeat going for the block; yields the client id."""
    hb = of(client)
    client_id = hb.acquire()
    try:
        yield client_id
    finally:
        hb.release()
