from __future__ import annotations

import ipaddress
import json

import pytest

from burst import webhooks
from burst_billing.webhooks import TargetRefused, check_address, parse_allow
from burst_core import budgets

SECRET = webhooks.new_secret()
BODY = json.dumps({"type": "budget.exceeded", "data": {"limit": 5}}).encode()
NOW = 1_767_225_600.0


def signed(body: bytes = BODY, secret: str = SECRET, at: float = NOW) -> dict[str, str]:
    return webhooks.headers(secret, "msg_1", body, now=at)


def test_signed_delivery_verifies_with_headers_in_any_case() -> None:
    h = {k.title(): v for k, v in signed().items()}
    assert webhooks.verify(BODY, h, SECRET, now=NOW + 10) == json.loads(BODY)
    assert signed()["webhook-signature"].startswith("v1,")


def test_known_vector_from_the_standard_webhooks_spec() -> None:
    # https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "old", "future", "missing"])
def test_verify_rejects(case: str) -> None:
    h, body, secret, now = signed(), BODY, SECRET, NOW
    if case == "tampered":
        body = BODY.replace(b"5", b"6")
    elif case == "wrong_secret":
        secret = webhooks.new_secret()
    elif case == "old":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    else:
        del h["webhook-signature"]
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(body, h, secret, tolerance=300, now=now)


@pytest.mark.parametrize("ip", ["169.254.169.254", "fe80::1", "fd00:ec2::254",
                                "100.100.100.200", "::ffff:169.254.169.254", "0.0.0.0"])
def test_link_local_and_metadata_are_refused_even_when_allowed(ip: str) -> None:
    with pytest.raises(TargetRefused, match="always refused"):
        check_address(ipaddress.ip_address(ip), parse_allow("loopback,private,0.0.0.0/0,::/0"))


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.20.0.1"])
def test_private_and_loopback_need_the_allowlist(ip: str) -> None:
    addr = ipaddress.ip_address(ip)
    with pytest.raises(TargetRefused, match="allowlist"):
        check_address(addr, ())
    check_address(addr, parse_allow("loopback,private"))


def test_public_addresses_pass_and_bad_allowlists_are_named() -> None:
    check_address(ipaddress.ip_address("93.184.216.34"), ())
    with pytest.raises(ValueError, match="10.0.0.300"):
        parse_allow("loopback,10.0.0.300/8")


def test_budget_scopes_and_periods() -> None:
    assert budgets.key("acme", "workspace") == "acme"
    assert budgets.key("acme", "shop.resize") == "acme.shop.resize"
    with pytest.raises(ValueError):
        budgets.key("acme", "Shop!")
    assert budgets.window("month", 0, NOW + 40 * 86400) == ("2026-02", "2026-02-01", "2026-02-28")
    created = NOW + 3 * 86400  # 2026-01-04
    assert budgets.window("7d", created, NOW + 12 * 86400) == (
        "2026-01-11..2026-01-17", "2026-01-11", "2026-01-17")
    assert budgets.window("2026-01-01..2026-01-31", 0, NOW)[1:] == ("2026-01-01", "2026-01-31")
    for bad in ("weekly", "0d", "2026-02-01..2026-01-01", "2026-13-01..2026-12-01"):
        with pytest.raises(ValueError, match="period"):
            budgets.check_period(bad)


def test_verifier_accepts_each_delivery_once() -> None:
    v = webhooks.Verifier(SECRET, tolerance=300)
    assert v.verify(BODY, signed(), now=NOW) == json.loads(BODY)
    with pytest.raises(webhooks.WebhookVerificationError, match="'msg_1' was already accepted"):
        v.verify(BODY, signed(), now=NOW + 1)  # replayed within the tolerance
    retry = webhooks.headers(SECRET, "msg_1", BODY, now=NOW + 60)  # Burst's own retry
    with pytest.raises(webhooks.WebhookVerificationError, match="already accepted"):
        v.verify(BODY, retry, now=NOW + 60)
    other = webhooks.headers(SECRET, "msg_2", BODY, now=NOW)
    assert v.verify(BODY, other, now=NOW) == json.loads(BODY)
    with pytest.raises(webhooks.WebhookVerificationError, match="no matching signature"):
        v.verify(BODY.replace(b"5", b"6"), webhooks.headers(SECRET, "msg_3", BODY, now=NOW),
                 now=NOW)
    with pytest.raises(webhooks.WebhookVerificationError, match="from now"):
        v.verify(BODY, webhooks.headers(SECRET, "msg_4", BODY, now=NOW - 3600), now=NOW)


def test_verifier_forgets_after_remember_and_bounds_its_memory() -> None:
    v = webhooks.Verifier(SECRET, tolerance=10, remember=20, max_ids=2)
    for i in range(3):
        v.verify(BODY, webhooks.headers(SECRET, f"m{i}", BODY, now=NOW), now=NOW)
    assert list(v._seen) == ["m1", "m2"]  # the oldest forgotten first
    later = NOW + 21
    assert v.verify(BODY, webhooks.headers(SECRET, "m1", BODY, now=later), now=later)
    with pytest.raises(Exception, match="remember=5: must be at least the tolerance"):
        webhooks.Verifier(SECRET, tolerance=10, remember=5)
    with pytest.raises(Exception, match="tolerance=0: must be > 0"):
        webhooks.Verifier(SECRET, tolerance=0)
