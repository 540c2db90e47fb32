"""Billing holds only the derived webhook key: it signs deliveries whose endpoint secret
the gateway sealed, with ``webhook.keys`` alone (no master key, none made), and a
delivery that comes before the gateway wrote that file is retried, not lost. The gateway
writes that file when it starts and on a rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from burst_core import bus, names, sealing
from burst_core.schemas import WebhookLogEntryDecoder
from burst_core.secrets import (
    KeyRing,
    WebhookKeys,
    add_master_key,
    new_master_key,
    write_webhook_keys,
)
from tests import gateway_inprocess as inproc
from tests.integration.test_billing import billing
from tests.integration.test_budgets import (
    FAST,
    add_endpoint,
    publish,
    rec,
    receiving,
    set_budget,
    until,
)

WS = "sealedws"


async def test_billing_signs_with_the_derived_key_alone(
        js: Any, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    # The gateway's ring (two keys: one rotated out, still opening what it sealed).
    old, new = new_master_key(), new_master_key()
    ring = KeyRing([new, old], "test")
    sealed = sealing.Sealer(KeyRing([old], "test")).seal("whsec_" + "k" * 32)
    billing_home = tmp_path / "billing"
    billing_home.mkdir()
    keys_file = tmp_path / "shared" / "webhook.keys"
    secret = "whsec_" + "k" * 32
    async with receiving(secret) as rx:
        await add_endpoint(js, WS, rx.url, sealed)
        await set_budget(js, WS, "shop", 0.012, alert_at=(50,))
        async with billing(nats_url, home=str(billing_home), webhook_keys_file=str(keys_file),
                           **FAST):
            await publish(js, [rec("c1", 0, 3.0, ws=WS), rec("c1", 1, 3.0, ws=WS)])  # 60%

            async def retrying() -> bool:
                log = await bus.kv_items(js, names.KV_WEBHOOK_LOG)
                entries = [WebhookLogEntryDecoder.decode(v) for v in log.values()]
                return any(e.workspace == WS and e.status == "retrying"
                           and "webhook key" in e.last_error for e in entries)
            try:  # No webhook.keys yet (the gateway has not started): retried, not failed.
                await until(retrying, what="a retried delivery naming the missing webhook key")
            except AssertionError:
                log = await bus.kv_items(js, names.KV_WEBHOOK_LOG)
                raise AssertionError([WebhookLogEntryDecoder.decode(v)
                                      for v in log.values()]) from None
            assert rx.events == []
            write_webhook_keys(ring, keys_file)  # what the gateway does when it starts
            await until(lambda: len(rx.events) == 1, what="the signed 50% alert")
        assert rx.rejected == 0 and rx.events[0]["type"] == "budget.threshold_crossed"
    # Billing neither made nor read a master key; the file holds no master key.
    assert not (billing_home / sealing.KEY_FILE).exists()
    text = keys_file.read_text()
    assert old not in text and new not in text and len(text.splitlines()) == 2


async def test_the_gateway_writes_the_derived_keys_at_start_and_on_rotation(
        nats_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    home, keys_file = tmp_path / "gw", tmp_path / "shared" / "webhook.keys"
    token = "bst_webhook-keys-integration"
    config = inproc.settings(nats_url, redis_url, str(home), token,
                             webhook_keys_file=str(keys_file),
                             health_file=str(tmp_path / "healthy"))
    async with inproc.gateway(config, "wk", headers={"Authorization": f"Bearer {token}"}
                              ) as (c, _):
        ring = KeyRing.load(home, create=False)
        assert [k.kid for k in WebhookKeys(keys_file).keys] == [ring.newest.kid]
        sealed = sealing.Sealer(ring).seal("whsec_" + "r" * 32)
        add_master_key(home)  # `burst secret rotate-key` adds a key, then asks the gateway
        r = await c.post("/v1/secrets/rotate-key", json={})
        assert r.status_code == 200, r.text
        rotated = KeyRing.load(home, create=False)
        assert [k.kid for k in WebhookKeys(keys_file).keys] == [k.kid for k in rotated.keys]
        after = sealing.Sealer(rotated).seal("whsec_" + "n" * 32)
        billing_box = sealing.Sealer(WebhookKeys(keys_file))
        assert billing_box.open(sealed) == "whsec_" + "r" * 32
        assert billing_box.open(after) == "whsec_" + "n" * 32
        # Its liveness loop touched the health file once a record reached NATS.
        await until(lambda: (tmp_path / "healthy").exists(), what="the health file")
