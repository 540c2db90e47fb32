"""Alerts on a real cluster: a function that always raises fires one
``function.error_rate_exceeded`` (from the counts in the agents' metering records, which
are checked too); a call that times out normally fires no ``container.runaway_detected``.
A receiver in the test verifies every signature."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from burst import webhooks as signing
from tests.e2e.conftest import Cluster, running_cluster
from tests.e2e.test_budgets import request
from tests.e2e.test_hello import _nats_url, write_app

pytestmark = pytest.mark.e2e

ALERTS = {
    "BURST_WEBHOOK_ALLOW_NETWORKS": "loopback",
    "BURST_WEBHOOK_RETRY_BASE": "0.2",
    "BURST_ERROR_RATE_WINDOW": "600",
    "BURST_ERROR_RATE_THRESHOLD": "0.5",
    "BURST_ERROR_RATE_MIN_CALLS": "5",
    "BURST_ERROR_RATE_INTERVAL": "0.2",
    "BURST_ERROR_RATE_POLL": "0.05",
    "BURST_RUNAWAY_FACTOR": "2",
}

APP = """
    import time

    import burst

    app = burst.App("alerting")

    @app.function(scaledown_window=600)
    def boom(x):
        raise ValueError(f"always fails: {x}")

    @app.function(timeout=2, scaledown_window=600)
    def hang(x):
        time.sleep(60)

    tries = {}

    # One container, so `tries` sees every attempt of a call.
    @app.function(max_containers=1, scaledown_window=600,
                  retries=burst.Retries(max_retries=2, initial_delay=0.1))
    def counted(x):
        tries[x] = tries.get(x, 0) + 1
        if x % 3 == 0:
            raise ValueError(f"fails on every attempt: {x}")
        if x % 3 == 1 and tries[x] == 1:
            raise ValueError(f"fails on its first attempt only: {x}")
        return x
"""


class Receiver:
    """Signed webhook POSTs on 127.0.0.1, verified with ``burst.webhooks.verify``."""

    def __init__(self) -> None:
        self.secret = ""
        self.events: list[dict[str, Any]] = []
        self.rejected = 0
        rx = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    event = signing.verify(body, dict(self.headers.items()), rx.secret)
                except signing.WebhookVerificationError:
                    rx.rejected += 1
                    self.send_response(400)
                else:
                    rx.events.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The shared cluster's settings, plus loopback webhooks and test-sized alert windows."""
    yield from running_cluster(tmp_path_factory, **ALERTS)


@pytest.fixture(scope="module")
def receiver(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    rx = Receiver()
    out = cluster.burst("webhook", "add", rx.url, "--events",
                        "function.error_rate_exceeded,container.runaway_detected",
                        check=True).stdout
    rx.secret = next(w for w in out.split() if w.startswith("whsec_"))
    app = write_app(tmp_path_factory.mktemp("alerting"), APP, "alerting_app.py")
    cluster.burst("deploy", str(app), check=True)
    yield rx
    rx.server.shutdown()


def busy_since_of(cluster: Cluster, fn_key: str) -> float | None:
    """The oldest running input's start, as the agent's heartbeat reports it."""
    import asyncio

    async def go() -> float | None:
        import nats
        from nats.js.errors import KeyNotFoundError, NoKeysError

        from burst_core.schemas import AgentHeartbeatDecoder

        nc = await nats.connect(_nats_url(cluster))
        try:
            kv = await nc.jetstream().key_value("burst_heartbeats")
            try:
                keys = await kv.keys()
            except NoKeysError:  # no agent's heartbeat stored at this instant
                return None
            for k in keys:
                try:
                    entry = await kv.get(k)
                except KeyNotFoundError:  # the agent's heartbeat replaced meanwhile
                    continue
                if not entry.value:
                    continue
                hb = AgentHeartbeatDecoder.decode(entry.value)
                for c in hb.containers:
                    if c.fn_key == fn_key and c.busy_since is not None:
                        return c.busy_since
            return None
        finally:
            await nc.close()
    return asyncio.run(go())


def test_always_failing_function_fires_one_error_rate_event(
    cluster: Cluster, receiver: Receiver
) -> None:
    # The counts come with the agents' metering records, every BURST_METERING_INTERVAL
    # (1 s in FAST_TIMERS): the event follows within about that plus the poll.
    admin = cluster.profile["token"]
    for i in range(8):
        status, body = request(cluster, admin, "POST",
                               "/v1/apps/alerting/functions/boom/calls?wait=60", {"args": [i]})
        assert "always fails" in json.dumps(body), (status, body)
    deadline = time.time() + 20
    while not receiver.of("function.error_rate_exceeded"):
        assert time.time() < deadline, f"no error-rate event; got {receiver.events}"
        time.sleep(0.2)
    time.sleep(2.0)  # ten re-checks of the window: still crossed, nothing fires again
    (event,) = receiver.of("function.error_rate_exceeded")
    data = event["data"]
    assert (data["app"], data["function"], data["workspace"]) == ("alerting", "boom", "default")
    assert data["failed"] == data["calls"] >= 5 and data["error_rate"] == 1.0
    assert receiver.rejected == 0


def metered_calls(cluster: Cluster, app: str, function: str,
                  ) -> tuple[int, int, list[tuple[str, int]]]:
    """(succeeded, failed, identities) over every metering record of ``function``."""
    import asyncio

    async def go() -> tuple[int, int, list[tuple[str, int]]]:
        import nats

        from burst_core import ledger, names
        from burst_core.schemas import MeteringRecord

        nc = await nats.connect(_nats_url(cluster))
        try:
            js = nc.jetstream()
            state = (await js.stream_info(names.STREAM_METERING)).state
            ok = failed = 0
            identities = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                rec = ledger.MeteringMessageDecoder.decode(
                    (await js.get_msg(names.STREAM_METERING, seq)).data)
                if (isinstance(rec, MeteringRecord) and rec.app == app
                        and rec.function == function):
                    ok, failed = ok + rec.succeeded, failed + rec.failed
                    identities.append((rec.container_id, rec.interval))
            return ok, failed, identities
        finally:
            await nc.close()
    return asyncio.run(go())


def test_metering_records_count_each_stored_call_once(
    cluster: Cluster, receiver: Receiver
) -> None:
    """Calls 0..8 of `counted`: x % 3 == 0 fail on all three attempts, x % 3 == 1 fail
    once and then succeed, the rest succeed: 6 succeeded and 3 failed, each call counted
    once (its stored output), whatever its attempts."""
    admin = cluster.profile["token"]
    for i in range(9):
        status, body = request(cluster, admin, "POST",
                               "/v1/apps/alerting/functions/counted/calls?wait=60",
                               {"args": [i]})
        assert status == 200 and (i % 3 == 0) == ("fails on every attempt" in json.dumps(body)), (
            i, status, body)
    deadline = time.time() + 20
    while metered_calls(cluster, "alerting", "counted")[:2] != (6, 3):
        assert time.time() < deadline, metered_calls(cluster, "alerting", "counted")
        time.sleep(0.3)
    time.sleep(2.5)  # more metering intervals: nothing counted twice
    ok, failed, identities = metered_calls(cluster, "alerting", "counted")
    assert (ok, failed) == (6, 3)
    assert len(identities) == len(set(identities)) > 1
    # 3 of 9 failed is below the threshold: no event for it.
    assert not [e for e in receiver.of("function.error_rate_exceeded")
                if e["data"]["function"] == "counted"]


def test_a_normal_timeout_is_not_a_runaway(cluster: Cluster, receiver: Receiver) -> None:
    admin = cluster.profile["token"]
    result: dict[str, Any] = {}

    def call() -> None:
        result["answer"] = request(cluster, admin, "POST",
                                   "/v1/apps/alerting/functions/hang/calls?wait=60", {"args": [1]})

    caller = threading.Thread(target=call)
    caller.start()
    seen = None
    deadline = time.time() + 60
    while seen is None and caller.is_alive():
        assert time.time() < deadline, "the call never ran"
        seen = busy_since_of(cluster, "default.alerting.hang")
        time.sleep(0.1)
    caller.join(60)
    status, body = result["answer"]
    assert "timed out" in json.dumps(body), (status, body)
    # The agent reported the running input (what the detector measures), and then killed
    # it at its 2 s timeout: past twice that and more, no runaway was detected.
    assert seen is not None, "the agent never reported the input as running"
    time.sleep(3 * 2.0)
    assert receiver.of("container.runaway_detected") == []
    assert receiver.rejected == 0


def test_webhook_secrets_are_sealed_at_rest(cluster: Cluster, receiver: Receiver) -> None:
    """The endpoint's secret signs deliveries (the tests above verified them with it), yet
    neither its KV entry nor any file of the NATS store holds it."""
    import asyncio

    async def entries() -> list[bytes]:
        import nats

        nc = await nats.connect(_nats_url(cluster))
        try:
            kv = await nc.jetstream().key_value("burst_webhooks")
            return [(await kv.get(k)).value for k in await kv.keys()]
        finally:
            await nc.close()

    values = asyncio.run(entries())
    assert len(values) == 1 and b"sealed:v2:" in values[0]
    secret = receiver.secret.encode()
    key_b64 = secret.removeprefix(b"whsec_")
    assert secret not in values[0] and key_b64 not in values[0]
    store = [p.read_bytes() for p in (cluster.home / "nats").rglob("*") if p.is_file()]
    # The search can find what the entry holds in clear (its URL), but not the secret.
    assert any(receiver.url.encode() in data for data in store)
    assert not any(key_b64 in data for data in store), "the webhook secret is in the store"
    key = cluster.home / "secrets.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert receiver.of("function.error_rate_exceeded"), "no delivery was signed with it"
