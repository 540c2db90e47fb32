"""A small HTTP client for the gateway (standard library only: ``import burst`` stays light).

One keep-alive connection per thread (:mod:`burst._http`: one write per request); an error
answer becomes the matching :mod:`burst.exception` class; an unreachable cluster becomes
``UnavailableError``.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from typing import Any

import msgspec

from burst import _context, _http, wire
from burst.exception import Error, InternalError, UnavailableError, from_api


def _split_urls(url: str) -> list[tuple[str, str, str, int]]:
    """(url, scheme, host, port) of each gateway URL in ``url`` (comma-separated)."""
    out = []
    for one in url.split(","):
        one = one.strip().rstrip("/")
        parsed = urllib.parse.urlsplit(one)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"invalid cluster URL {one!r} in {url!r}: expected "
                             "http(s)://host:port, several separated by commas")
        out.append((one, parsed.scheme, parsed.hostname,
                    parsed.port or (443 if parsed.scheme == "https" else 80)))
    return out


class Client:
    """The gateway's API. ``url`` may name several gateways of one cluster, separated by
    commas (``BURST_URL=http://a:8780,http://b:8780``): a request that cannot reach one
    (or that it answers 503) goes to the next, and the client stays with the one that
    answered. Calls carry a submission id, so a call sent again through another gateway
    runs once."""

    #: URLs a gateway answered in this process: a refused connection to one of them is
    #: retried (a restart); elsewhere it fails at once (no cluster running at all).
    reached_urls: set[str] = set()

    def __init__(self, url: str, token: str, timeout: float = 90.0,
                 unavailable_retry: float | None = None) -> None:
        self._urls = _split_urls(url)
        self._current = 0
        self.token = token
        self.timeout = timeout
        self._local = threading.local()
        #: Seconds a request keeps retrying while the cluster is briefly out of reach
        #: (``BURST_UNAVAILABLE_RETRY`` unless given; health probes give 0).
        self.unavailable_retry = (retry_window() if unavailable_retry is None
                                  else unavailable_retry)

    @property
    def url(self) -> str:
        """The gateway in use."""
        return self._urls[self._current][0]

    @property
    def _scheme(self) -> str:
        return self._urls[self._current][1]

    @property
    def _host(self) -> str:
        return self._urls[self._current][2]

    @property
    def _port(self) -> int:
        return self._urls[self._current][3]

    @classmethod
    def from_profile(cls) -> Client:
        """The client of the current profile; inside a container, the agent's relay."""
        if _context.platform is not None:
            return ContainerClient(_context.platform)
        from burst.config import load_profile

        p = load_profile()
        return cls(p.url, p.token)

    # ---- transport -----------------------------------------------------------------
    def _conn(self) -> _http.Connection:
        conn: _http.Connection | None = getattr(self._local, "conn", None)
        index = self._current
        if conn is None or getattr(self._local, "index", index) != index:
            if conn is not None:
                conn.close()
            _, scheme, host, port = self._urls[index]
            conn = _http.Connection(host, port, self.timeout, tls=scheme == "https")
            self._local.conn, self._local.index = conn, index
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None, params: dict[str, Any] | None = None,
                expect: tuple[int, ...] = (200, 201, 202, 204),
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if params:
            path += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        extra = headers
        headers = {"Authorization": f"Bearer {self.token}", "Accept": wire.MSGPACK}
        if content_type:
            headers["Content-Type"] = content_type
        if extra:
            headers.update(extra)
        # The window counts from the first failure, not from the request's start: a
        # long-polling wait (a call's result, up to a minute) answered 503 at its end, as
        # when NATS elects a new leader meanwhile, is still sent again.
        first_failure: list[float] = []

        def within_window() -> bool:
            if not first_failure:
                first_failure.append(time.monotonic())
            return time.monotonic() < first_failure[0] + self.unavailable_retry
        # Idempotent requests can be sent again whatever became of the first one, and so can
        # a call's submission (it carries a submission id: sent again, to this gateway or
        # another, it is the same call); other POSTs only when they never reached a gateway
        # (a refused connection) or it refused them with 503 before doing anything.
        idempotent = method != "POST" or path.startswith("/v1/calls/wait")
        resendable = idempotent or path.split("?")[0].endswith(("/calls", "/calls/batch"))
        fresh = False  # a retry on a new connection after the server closed a kept one
        failed: list[str] = []
        while True:
            conn = self._conn()
            try:
                status, data = conn.request(method, path, body, headers)
            except (ConnectionRefusedError, OSError, http.client.HTTPException) as e:
                self._drop()
                closed = isinstance(e, http.client.RemoteDisconnected | BrokenPipeError
                                    | ConnectionResetError)
                # A kept-alive connection the server closed: retry once on a fresh one.
                if closed and not fresh:
                    fresh = True
                    continue
                refused = isinstance(e, ConnectionRefusedError)
                failed.append(f"{self.url} ({e.__class__.__name__}: {e})")
                if (refused or resendable) and self._next_gateway(len(failed)):
                    fresh = False
                    continue
                if ((refused and self.reached) or (resendable and closed)) and within_window():
                    time.sleep(RETRY_STEP)  # a gateway restarting: back within seconds
                    failed.clear()
                    fresh = False
                    continue
                raise UnavailableError(
                    f"cannot reach the Burst cluster at {'; '.join(failed)}; "
                    "is it running? (`burst up`, `burst status`)") from None
            if not self.reached:
                Client.reached_urls.add(self.url)
            if status == 503 and 503 not in expect:
                failed.append(f"{self.url} (503)")
                if self._next_gateway(len(failed)):
                    continue
                if _unavailable(data) and within_window():
                    time.sleep(RETRY_STEP)  # NATS restarting behind the gateway
                    failed.clear()
                    continue
            break
        if status in expect:
            return status, data
        raise _error_from(status, data)

    @property
    def reached(self) -> bool:
        """Whether a gateway at this URL answered this process before."""
        return self.url in Client.reached_urls

    @reached.setter
    def reached(self, value: bool) -> None:
        if value:
            Client.reached_urls.add(self.url)
        else:
            Client.reached_urls.discard(self.url)

    def _next_gateway(self, failures: int) -> bool:
        """Move on to the next gateway; False once every one has failed this request."""
        if failures >= len(self._urls):
            return False
        self._current = (self._current + 1) % len(self._urls)
        return True

    # ---- API -----------------------------------------------------------------------
    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return json.loads(self.request("GET", path, params=params)[1])

    def post_json(self, path: str, obj: Any) -> Any:
        body = json.dumps(obj).encode()
        return json.loads(self.request("POST", path, body, "application/json")[1])

    def has_bundle(self, h: str) -> bool:
        status, _ = self.request("HEAD", f"/v1/bundles/{h}", expect=(200, 404))
        return status == 200

    def put_bundle(self, h: str, data: bytes) -> None:
        self.request("PUT", f"/v1/bundles/{h}", data, "application/octet-stream")

    def deploy(self, req: wire.DeployRequest) -> wire.DeployResponse:
        _, data = self.request("POST", "/v1/apps", wire.encode(req), wire.MSGPACK)
        return wire.deploy_response_decoder.decode(data)

    def remove_app(self, app: str) -> None:
        self.request("DELETE", f"/v1/apps/{app}")

    def put_blob(self, data: bytes) -> str:
        """Upload a payload above the inline limit; returns its reference (sha256)."""
        import hashlib

        if len(data) > wire.MAX_PAYLOAD:
            from burst.exception import PayloadTooLargeError

            raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the "
                                       f"{wire.MAX_PAYLOAD >> 20} MiB limit")
        ref = hashlib.sha256(data).hexdigest()
        self.request("PUT", f"/v1/blobs/{ref}", data, "application/octet-stream")
        return ref

    def get_blob(self, ref: str) -> bytes:
        return self.request("GET", f"/v1/blobs/{ref}")[1]

    def call(self, app: str, fn: str, payload: bytes, payload_ref: str = "",
             wait: float = 60.0, traceparent: str = "") -> wire.CallResponse:
        body = wire.encode(wire.CallRequest(payload=payload, payload_ref=payload_ref,
                                            submission_id=wire.new_submission_id()))
        _, data = self.request("POST", f"/v1/apps/{app}/functions/{fn}/calls", body,
                               wire.MSGPACK, params={"wait": wait},
                               headers={"traceparent": traceparent} if traceparent else None)
        return wire.call_response_decoder.decode(data)

    def call_batch(self, app: str, fn: str, payloads: list[bytes],
                   traceparent: str = "", transient: bool = False) -> list[wire.CallRef]:
        """Create one call per payload; ``transient``: their results are read once, as
        they finish (a map), and kept only the transient result retention."""
        body = wire.encode(wire.CallBatchRequest(payloads=payloads, transient=transient,
                                                 submission_id=wire.new_submission_id()))
        _, data = self.request("POST", f"/v1/apps/{app}/functions/{fn}/calls/batch", body,
                               wire.MSGPACK,
                               headers={"traceparent": traceparent} if traceparent else None)
        return wire.call_batch_response_decoder.decode(data).calls

    def wait_calls(self, refs: list[wire.CallRef], wait: float,
                   linger: float = 0.0) -> list[wire.CallResponse]:
        body = wire.encode(wire.CallWaitRequest(calls=refs, wait=wait, linger=linger))
        _, data = self.request("POST", "/v1/calls/wait", body, wire.MSGPACK)
        return wire.call_wait_response_decoder.decode(data).results

    def call_items(self, call_id: str, cursor: int, wait: float) -> wire.CallItemsResponse:
        _, data = self.request("GET", f"/v1/calls/{call_id}/items",
                               params={"cursor": cursor, "wait": wait})
        return wire.call_items_response_decoder.decode(data)

    def get_call(self, call_id: str, wait: float = 60.0) -> wire.CallResponse:
        _, data = self.request("GET", f"/v1/calls/{call_id}", params={"wait": wait})
        return wire.call_response_decoder.decode(data)

    def wait_call(self, resp: wire.CallResponse,
                  timeout: float | None = None) -> wire.CallResponse:
        """Poll until the call is finished (or ``timeout`` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while resp.status == "pending":
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            if deadline is not None and left <= 0:
                break
            resp = self.get_call(resp.call_id, wait=left)
        return resp


class ContainerClient(Client):
    """The client inside a container: the same requests, sent as platform requests over
    the container's socket (containers have no token and no route to the gateway). The
    agent answers them as the gateway would, in the container's workspace, and makes the
    calls on behalf of the call this thread runs (their parent)."""

    #: Seconds a relayed request may take beyond the longest wait one asks for (a wait
    #: named in a request's body, as ``wait_calls`` does, is at most ``MAX_WAIT``).
    MARGIN = 30.0
    MAX_WAIT = 60.0

    def __init__(self, platform: _context.Platform) -> None:
        self._urls, self._current = [("container://agent", "", "", 0)], 0
        self.token, self.timeout = "", 90.0
        self.platform = platform

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None, params: dict[str, Any] | None = None,
                expect: tuple[int, ...] = (200, 201, 202, 204),
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        req = wire.ApiRequest(method=method, path=path, params=query, body=body or b"",
                              call_id=_context.current_call.get())
        try:
            wait = float(query.get("wait", 0.0))
        except ValueError:
            wait = 0.0
        data = self.platform.request("api", wire.encode(req),
                                     max(wait, self.MAX_WAIT) + self.MARGIN)
        resp = wire.api_response_decoder.decode(data)
        if resp.status in expect:
            return resp.status, resp.body
        raise _error_from(resp.status, resp.body)


#: ``BURST_UNAVAILABLE_RETRY``: seconds a request keeps trying while the cluster is out of
#: reach (a gateway or nats-server restarting: connection refused, or 503 Unavailable)
#: before it raises ``UnavailableError``; 0 raises at once.
UNAVAILABLE_RETRY_ENV = "BURST_UNAVAILABLE_RETRY"
DEFAULT_UNAVAILABLE_RETRY = 30.0
#: Seconds between those tries.
RETRY_STEP = 0.25


def retry_window() -> float:
    raw = os.environ.get(UNAVAILABLE_RETRY_ENV, "")
    if not raw:
        return DEFAULT_UNAVAILABLE_RETRY
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"invalid {UNAVAILABLE_RETRY_ENV}={raw!r}: use a number of seconds "
                         ">= 0 (0: no retry)")
    return value


def _unavailable(data: bytes) -> bool:
    try:
        return bool(json.loads(data)["error"]["type"] == UnavailableError.type)
    except (ValueError, KeyError, TypeError):
        return False


def _error_from(status: int, data: bytes) -> Error:
    try:
        err = json.loads(data)["error"]
        return from_api(str(err["type"]), str(err["message"]))
    except (ValueError, KeyError, TypeError, msgspec.DecodeError):
        text = data[:300].decode(errors="replace")
        return InternalError(f"unexpected answer from the gateway (HTTP {status}): {text}")
