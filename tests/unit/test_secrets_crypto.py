"""Envelope encryption of user secrets and the master key ring (burst_core.secrets), and
webhook signing secrets sealed under their own derived key (burst_core.sealing)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from burst_core import sealing, secrets


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(secrets.ENV_VAR, raising=False)


def test_envelope_round_trip_and_workspace_bound(tmp_path: Path) -> None:
    ring = secrets.KeyRing.load(tmp_path)
    sealed = ring.seal_values("ws1", {"TOKEN": "hunter2-value"})
    assert sealed.startswith(secrets.ENVELOPE_PREFIX)
    assert "hunter2" not in base64.b64decode(sealed[len(secrets.ENVELOPE_PREFIX):]).decode(
        "latin-1")
    assert ring.open_values("ws1", sealed) == {"TOKEN": "hunter2-value"}
    # a fresh data key per version: the same values seal differently
    assert ring.seal_values("ws1", {"TOKEN": "hunter2-value"}) != sealed
    with pytest.raises(secrets.KeyRingError, match="another workspace"):
        ring.open_values("ws2", sealed)


def test_rotation_rewraps_and_old_keys_still_open(tmp_path: Path) -> None:
    ring = secrets.KeyRing.load(tmp_path)
    old_kid = ring.newest.kid
    sealed = ring.seal_values("ws", {"A": "1"})
    new_kid = secrets.add_master_key(tmp_path)
    assert new_kid != old_kid
    assert ring.reload() and ring.newest.kid == new_kid
    assert ring.open_values("ws", sealed) == {"A": "1"}  # the old key is still in the ring
    assert ring.needs_rewrap(sealed)
    moved = ring.rewrap(sealed)
    assert not ring.needs_rewrap(moved)
    # with the old key gone, the rewrapped envelope still opens; the old one does not
    only_new = secrets.KeyRing([sealing.key_path(tmp_path).read_text().splitlines()[0]])
    assert only_new.open_values("ws", moved) == {"A": "1"}
    with pytest.raises(secrets.KeyRingError, match=old_kid):
        only_new.open_values("ws", sealed)


def test_keys_from_env_newest_first_and_short_key_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = secrets.new_master_key(), secrets.new_master_key()
    monkeypatch.setenv(secrets.ENV_VAR, f"{k2},{k1}")
    ring = secrets.KeyRing.load(None)
    assert [k.kid for k in ring.keys] == [secrets.MasterKey.of(k2).kid,
                                          secrets.MasterKey.of(k1).kid]
    assert not sealing.key_path(tmp_path).exists()
    monkeypatch.setenv(secrets.ENV_VAR, "short-secret-key")
    with pytest.raises(secrets.KeyRingError, match="at least 32") as e:
        secrets.KeyRing.load(None)
    assert "short-secret-key" not in str(e.value)


def test_one_key_per_purpose(tmp_path: Path) -> None:
    text = secrets.new_master_key()
    k = secrets.MasterKey.of(text)
    assert len({k.secrets_key, base64.urlsafe_b64decode(k.webhook_key), text.encode()}) == 3
    box = sealing.Sealer(secrets.KeyRing([text]))
    stored = box.seal("whsec_abc")
    assert stored.startswith(f"{sealing.PREFIX_V2}{k.kid}:")
    with pytest.raises(InvalidToken):  # the master key itself does not open it
        Fernet(text.encode()).decrypt(stored.split(":", 3)[3].encode())


def test_legacy_sealed_webhook_secret_is_resealed(tmp_path: Path) -> None:
    key = sealing.load_or_create_key(tmp_path)
    legacy = sealing.PREFIX_V1 + Fernet(key).encrypt(b"whsec_old").decode()
    box = sealing.Sealer.from_home(tmp_path)
    assert box.open(legacy) == "whsec_old"
    assert box.needs_reseal(legacy)
    fresh = box.reseal(legacy)
    assert fresh.startswith(sealing.PREFIX_V2) and not box.needs_reseal(fresh)
    assert box.open(fresh) == "whsec_old"
