"""The derived webhook keys billing holds instead of the master keys
(``burst_core.secrets.WebhookKeys``), the compose init service that makes the master key
(``burst_core.keyinit``), and ``burst up`` giving the master keys to the gateway alone."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from burst._cluster import _start_services
from burst_core import keyinit, sealing
from burst_core.secrets import (
    KeyRing,
    KeyRingError,
    WebhookKeys,
    new_master_key,
    write_webhook_keys,
)


def test_derived_keys_open_what_the_ring_sealed_and_hold_no_master_key(tmp_path: Path) -> None:
    old, new = new_master_key(), new_master_key()
    by_old = sealing.Sealer(KeyRing([old])).seal("whsec_old")
    ring = KeyRing([new, old])
    by_new = sealing.Sealer(ring).seal("whsec_new")
    path = tmp_path / "webhook.keys"
    write_webhook_keys(ring, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert old not in text and new not in text
    box = sealing.Sealer(WebhookKeys(path))
    assert box.open(by_old) == "whsec_old" and box.open(by_new) == "whsec_new"
    # A sealed:v1 value needs the master key itself: a clear refusal, not a wrong answer.
    v1 = sealing.PREFIX_V1 + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    with pytest.raises(sealing.SealingError, match="gateway reseals it when it starts"):
        box.open(v1)


def test_a_key_added_later_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "webhook.keys"
    first = new_master_key()
    write_webhook_keys(KeyRing([first]), path)
    box = sealing.Sealer(WebhookKeys(path))
    rotated = KeyRing([new_master_key(), first])
    sealed = sealing.Sealer(rotated).seal("whsec_after_rotation")
    with pytest.raises(sealing.SealingError, match="whose webhook key is not in"):
        box.open(sealed)  # the gateway has not written the new key yet
    write_webhook_keys(rotated, path)
    assert box.open(sealed) == "whsec_after_rotation"


def test_a_missing_or_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="no webhook key in .* yet"):
        _ = WebhookKeys(tmp_path / "absent").newest
    bad = tmp_path / "webhook.keys"
    bad.write_text("abc:not-a-key\n")
    with pytest.raises(KeyRingError, match="line 1 is not '<key id>:<webhook key>'") as e:
        WebhookKeys(bad)
    assert "not-a-key" not in str(e.value)


def test_keyinit_makes_the_master_key_once(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BURST_MASTER_KEYS", raising=False)
    keys, hooks = tmp_path / "keys", tmp_path / "hooks" / "webhook.keys"
    argv = ["--home", str(keys), "--webhook-keys", str(hooks)]
    assert keyinit.main(argv) == 0
    master = sealing.key_path(keys).read_text()
    assert "made" in capsys.readouterr().out
    assert keyinit.main(argv) == 0  # a later `up`: the same key
    assert sealing.key_path(keys).read_text() == master
    assert "kept" in capsys.readouterr().out
    ring = KeyRing.load(keys, create=False)
    assert WebhookKeys(hooks).newest.kid == ring.newest.kid
    assert master.strip() not in hooks.read_text()
    assert keyinit.main([*argv, "--new-key"]) == 0  # a rotation: new first, the old after
    assert "added" in capsys.readouterr().out
    texts = sealing.key_path(keys).read_text().split()
    assert len(texts) == 2 and texts[1] == master.strip()
    assert [k.kid for k in WebhookKeys(hooks).keys] == [
        k.kid for k in KeyRing.load(keys, create=False).keys]
    (tmp_path / "file").write_text("")
    assert keyinit.main(["--home", str(tmp_path / "file"), "--webhook-keys", str(hooks)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_burst_up_gives_the_master_keys_to_the_gateway_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_MASTER_KEYS", new_master_key())
    started: dict[str, dict[str, str]] = {}

    class Recorder:
        home = tmp_path

        def start(self, name: str, argv: list[str], env: dict[str, str], **ports: Any) -> None:
            started[name] = env

    ports = {"gateway": 1, "web": 2, "nats": 3, "redis": 4}
    _start_services(Recorder(), ports, "bst_x", "", False)  # type: ignore[arg-type]
    assert set(started) == {"scheduler", "billing", "gateway", "agent"}
    assert [n for n, env in started.items() if "BURST_MASTER_KEYS" in env] == ["gateway"]
