"""Billing under faults, under the shared invariant checker: billing SIGKILLed right after
a ledger write and restarted (the checker's full replay of the metering stream must
rebuild the saved ledger bit for bit); a hard budget crossed mid-load; and the webhook
it fires, forged, stale and replayed at a receiver that verifies it.

One cluster for the module (webhooks to loopback allowed); the faultless pass runs once.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burst import webhooks
from burst_core import names
from tests.e2e.conftest import Cluster, running_cluster
from tests.reliability import workload
from tests.reliability.checker import Accepted, check
from tests.reliability.checker import Cluster as Ports
from tests.reliability.test_servers import part
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

SETTINGS = {
    "BURST_WEBHOOK_ALLOW_NETWORKS": "loopback",
    "BURST_WEBHOOK_RETRY_BASE": "0.2",
    "BURST_BUDGET_INTERVAL": "0.2",
    # Billing, SIGKILLed, is back within a second.
    "BURST_SUPERVISE_BACKOFF": "0.5",
}
PLAN = dict(spawn=4, map=12, remote=2, sleep=0.3, map_sleep=0.3)
OPTIONS = "scaledown_window=2, max_containers=2"


@pytest.fixture(scope="module")
def bcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory, **SETTINGS)


def test_faultless_pass(bcluster: Cluster, tmp_path: Path) -> None:
    workload.deploy(bcluster, tmp_path, "billing-ok", OPTIONS)
    workload.run_checked(bcluster, "billing-ok", workload.Plan(**PLAN))  # type: ignore[arg-type]


async def _ledger_revision(nats_url: str) -> int:
    import nats

    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(names.KV_LEDGER)
        try:
            return int((await kv.get("state")).revision or 0)
        except Exception:
            return 0
    finally:
        await nc.close()


def test_billing_sigkilled_right_after_a_ledger_write(bcluster: Cluster, tmp_path: Path) -> None:
    """The writer's position is the saved snapshot's own ``seq``: killed after a save with
    records folded since (unsaved), the restarted writer folds them again from there."""
    c = bcluster
    nats_url = Ports.of(c.home).nats_url
    workload.deploy(c, tmp_path, "billing-kill", OPTIONS)
    ready = tmp_path / "spawned"
    plan = workload.Plan(**PLAN, ready_file=str(ready))  # type: ignore[arg-type]
    proc = workload.start(c, "billing-kill", plan)
    eventually(ready.exists, 60, "the calls spawned")
    before = asyncio.run(_ledger_revision(nats_url))
    # Right after billing's next write of the ledger (polled as fast as NATS answers).
    eventually(lambda: asyncio.run(_ledger_revision(nats_url)) > before, 30,
               "billing saved the ledger", step=0.0)
    victim = part(c, "billing")
    os.kill(victim["pid"], signal.SIGKILL)
    eventually(lambda: part(c, "billing")["pid"] != victim["pid"], 30,
               "billing restarted by the supervisor")
    workload.run_checked(c, "billing-kill", plan, proc)
    assert "ledger_loaded" in c.log("billing").split("restarted by burst's supervisor")[-1]


class Receiver:
    """Webhook POSTs on 127.0.0.1 as a careful receiver takes them: verified, and each
    delivery id acted on once (``burst.webhooks.Verifier``)."""

    def __init__(self) -> None:
        self.verifier: webhooks.Verifier | None = None
        self.raw: list[tuple[bytes, dict[str, str]]] = []
        self.events: list[dict[str, Any]] = []
        self.refused: list[str] = []
        rx = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                rx.raw.append((body, headers))
                assert rx.verifier is not None
                try:
                    rx.events.append(rx.verifier.verify(body, headers))
                except webhooks.WebhookVerificationError as e:
                    rx.refused.append(str(e))
                    self.send_response(400)
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        import urllib.error
        import urllib.request

        headers = {k: v for k, v in headers.items()  # what a sender sets, not the transport
                   if k.lower().startswith("webhook-") or k.lower() == "content-type"}
        req = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)


BUDGET_DRIVER = r"""
import json, sys, time
import burst
from burst.exception import BudgetExceededError

f = burst.Function.from_name(sys.argv[1], "work")
ready = sys.argv[2]
accepted, refused, errors = [], 0, []
calls = []
for i in range(40):  # a fixed rate of spawns; the cap is set from the test while they run
    try:
        calls.append((i, f.spawn(i, 1.0)))
    except BudgetExceededError:
        refused += 1
    if i == 4:
        open(ready, "w").write("go\n")
    time.sleep(0.15)
for i, call in calls:
    try:
        value = call.get(timeout=30)
    except Exception as e:
        value = ["error", type(e).__name__]
    accepted.append({"call_id": call.object_id, "value": value, "kind": "spawn"})
print(json.dumps({"accepted": accepted, "refused": refused, "errors": errors}))
"""


@pytest.fixture(scope="module")
def receiver(bcluster: Cluster) -> Iterator[Receiver]:
    rx = Receiver()
    out = bcluster.burst("webhook", "add", rx.url, "--events", "budget.exceeded",
                         check=True).stdout
    secret = next(w for w in out.split() if w.startswith("whsec_"))
    rx.verifier = webhooks.Verifier(secret)
    yield rx
    rx.server.shutdown()


def test_hard_budget_crossed_mid_load(bcluster: Cluster, receiver: Receiver,
                                      tmp_path: Path) -> None:
    """Calls spawned at a steady rate while a hard cap is set: later submissions are
    refused (402), every accepted call still ends with exactly one result (its value, or
    the budget's error), and the app's containers stop."""
    c = bcluster
    workload.deploy(c, tmp_path, "billing-capped", "scaledown_window=600, max_containers=2")
    ready = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", BUDGET_DRIVER, "billing-capped", str(ready)],
                            env=c.env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    eventually(ready.exists, 60, "the first calls spawned")
    c.burst("budget", "set", "billing-capped", "--limit", "0.0000001", "--hard", check=True)
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the workload did not finish:\n{out}\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    body = json.loads(out.strip().splitlines()[-1])
    assert body["refused"] > 0, body  # the cap was crossed mid-load
    accepted = [Accepted(a["call_id"], a["value"], a["kind"]) for a in body["accepted"]]
    bad = [a for a in accepted if isinstance(a.value, list) and a.value[:1] == ["error"]
           and a.value[1] not in ("BudgetExceededError", "InputCancellation")]
    assert not bad, bad
    summary = check(c.home, "billing-capped", ["work"], accepted, timeout=60)
    stopped = sum(1 for a in accepted if a.value == ["error", "BudgetExceededError"])
    print(f"checked billing-capped: {summary}, refused {body['refused']}, "
          f"answered with the cap's error {stopped}")
    # The budget.exceeded webhook arrived, verified, once.
    eventually(lambda: [e for e in receiver.events if e["type"] == "budget.exceeded"], 30,
               "the budget.exceeded webhook")


def test_forged_stale_and_replayed_webhooks_are_refused(receiver: Receiver) -> None:
    """The real delivery (from the budget test) replayed, altered, re-signed with another
    secret, and presented late: the receiver acts on the genuine one only, once."""
    genuine = [(b, h) for b, h in receiver.raw
               if json.loads(b).get("type") == "budget.exceeded"]
    assert genuine, "no budget.exceeded delivery to tamper with"
    body, received = genuine[0]
    headers = {k.lower(): v for k, v in received.items()}
    acted = len(receiver.events)
    assert receiver.post(body, headers) == 400  # replayed: its id was acted on already
    forged = body.replace(b'"budget.exceeded"', b'"budget.cleared"')
    assert receiver.post(forged, headers) == 400  # altered body, original signature
    other = webhooks.headers(webhooks.new_secret(), headers["webhook-id"] + "x", body)
    assert receiver.post(body, other) == 400  # signed with a secret that is not the endpoint's
    stale_ts = int(headers["webhook-timestamp"]) - 3600
    assert receiver.verifier is not None
    stale = {**headers, "webhook-id": headers["webhook-id"] + "y",
             "webhook-timestamp": str(stale_ts)}
    stale["webhook-signature"] = webhooks.sign(receiver.verifier.secret, stale["webhook-id"],
                                               stale_ts, body)
    assert receiver.post(body, stale) == 400  # correctly signed, but an hour old
    assert len(receiver.events) == acted
    assert len(receiver.refused) >= 4
    assert any("already" in r for r in receiver.refused), receiver.refused
