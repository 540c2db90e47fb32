"""Sealed secrets: the key file in BURST_HOME, round trips, and a foreign key refused."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from burst import webhooks as signing
from burst_core import sealing


def test_the_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(
        sealing.load_or_create_key(tmp_path / "home"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and keys[0]
    path = sealing.key_path(tmp_path / "home")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # loosened by hand: tightened again on the next use
    assert sealing.load_or_create_key(tmp_path / "home") == keys[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_seal_and_open(tmp_path: Path) -> None:
    box = sealing.Sealer.from_home(tmp_path)
    secret = signing.new_secret()
    stored = box.seal(secret)
    key_b64 = secret.removeprefix("whsec_")
    assert stored.startswith(sealing.PREFIX) and secret not in stored and key_b64 not in stored
    assert box.seal(secret) != stored  # a fresh IV each time: equal secrets look different
    assert box.open(stored) == secret
    assert box.open(secret) == secret  # stored before sealing existed: as it is
    other = sealing.Sealer.from_home(tmp_path / "another-cluster")
    with pytest.raises(sealing.SealingError, match="key ring"):
        other.open(stored)
    with pytest.raises(sealing.SealingError):
        box.open(stored[:-4] + "AAAA")
