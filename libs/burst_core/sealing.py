"""Webhook signing secrets at rest: sealed with a key kept outside NATS, never in NATS.

A webhook endpoint's signing secret is stored in KV sealed (Fernet: AES-128-CBC with an
HMAC-SHA256, from ``cryptography``, under a key derived for this purpose from the
cluster's master key: ``burst_core.secrets``), so whoever can read the NATS store (a
backup, the ``nats`` CLI) learns nothing that lets them forge a delivery. The master keys
come from ``BURST_MASTER_KEYS`` or ``$BURST_HOME/secrets.key`` (mode 0600, created by
whichever service needs it first; the user's containers never see ``$BURST_HOME``).
The gateway holds the master keys and seals; billing, which only opens (to sign
deliveries), holds only the derived webhook keys: the file ``webhook.keys`` the gateway
writes from its ring (``burst_core.secrets.write_webhook_keys``; under compose the init
service writes it first), never a master key.

Example::

    box = Sealer.from_home("/root/.burst")
    stored = box.seal("whsec_...")   # "sealed:v2:<key id>:gAAAAA..."
    box.open(stored)                 # "whsec_..."
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken

if TYPE_CHECKING:
    from burst_core.secrets import KeyRing, WebhookKeys

KEY_FILE = "secrets.key"
#: Every sealed value starts so; ``v1``: Fernet under the master key itself (before keys
#: were derived per purpose), ``v2:<key id>:``: under the webhook key derived from it.
PREFIX = "sealed:"
PREFIX_V1 = "sealed:v1:"
PREFIX_V2 = "sealed:v2:"


class SealingError(Exception):
    """A sealed value cannot be opened: another cluster's key, or damaged."""


def key_path(home: str | os.PathLike[str]) -> Path:
    return Path(home) / KEY_FILE


def load_or_create_key(home: str | os.PathLike[str]) -> bytes:
    """The key in ``home``; created (mode 0600) on first use. Safe against a concurrent
    first use by another service: exactly one creates it, the others read it."""
    path = key_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
            f.flush()
            os.fsync(f.fileno())
    for _ in range(100):  # a concurrent creator may not have written it yet
        data = path.read_bytes().strip()
        if data:
            break
        time.sleep(0.01)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)  # never readable by others, whoever created it
    return data


class Sealer:
    """Seals and opens webhook signing secrets with the key derived for that purpose from
    the newest master key of the ring (``burst_core.secrets``); opens what any key of the
    ring sealed, and what the master key itself sealed before keys were derived
    (``sealed:v1:``). Given only the derived webhook keys (:class:`WebhookKeys`, as
    billing is), it opens ``sealed:v2:`` values; ``sealed:v1:`` ones need the master key,
    and the gateway reseals them when it starts."""

    def __init__(self, ring: KeyRing | WebhookKeys) -> None:
        self.ring = ring

    @classmethod
    def from_home(cls, home: str | os.PathLike[str]) -> Sealer:
        from burst_core.secrets import KeyRing

        return cls(KeyRing.load(home))

    def seal(self, secret: str) -> str:
        k = self.ring.newest
        return f"{PREFIX_V2}{k.kid}:" + Fernet(k.webhook_key).encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret; a value stored before sealing existed is returned as it is."""
        from burst_core.secrets import KeyRingError

        if stored.startswith(PREFIX_V2):
            kid, _, token = stored[len(PREFIX_V2):].partition(":")
            try:
                key = self.ring.by_kid(kid)
            except KeyRingError as e:  # says which key is missing from where
                raise SealingError(f"cannot open a sealed secret: {e}") from None
            try:
                return Fernet(key.webhook_key).decrypt(token.encode()).decode()
            except InvalidToken:
                raise SealingError(f"cannot open a sealed secret: it does not open under "
                                   f"master key {kid}'s webhook key: it is damaged") from None
        if not stored.startswith(PREFIX_V1):
            return stored
        for k in self.ring.keys:
            if k.legacy_fernet is None:
                continue
            try:
                return k.legacy_fernet.decrypt(stored[len(PREFIX_V1):].encode()).decode()
            except InvalidToken:
                continue
        if not any(k.legacy_fernet is not None for k in self.ring.keys):
            raise SealingError("cannot open a secret sealed under the master key itself "
                               "(sealed:v1) with the derived webhook keys alone: the gateway "
                               "reseals it when it starts")
        raise SealingError("cannot open a sealed secret: it was sealed with another "
                           f"key than {KEY_FILE} in this BURST_HOME")

    def needs_reseal(self, stored: str) -> bool:
        """Whether ``stored`` is sealed otherwise than under the newest derived key."""
        return stored.startswith(PREFIX) and not stored.startswith(
            f"{PREFIX_V2}{self.ring.newest.kid}:")

    def reseal(self, stored: str) -> str:
        return self.seal(self.open(stored))


_by_home: dict[str, Sealer] = {}


def for_home(home: str | os.PathLike[str]) -> Sealer:
    """The sealer of ``home``'s key, loaded (or created) once per process."""
    k = str(Path(home).resolve())
    box = _by_home.get(k)
    if box is None:
        box = _by_home[k] = Sealer.from_home(k)
    return box


_by_keys_file: dict[str, Sealer] = {}


def for_webhook_keys(path: str | os.PathLike[str]) -> Sealer:
    """An opener holding only the derived webhook keys of ``path`` (billing's), loaded
    once per process and read again when a value names a key id it lacks."""
    from burst_core.secrets import WebhookKeys

    k = str(Path(path).resolve())
    box = _by_keys_file.get(k)
    if box is None:
        box = _by_keys_file[k] = Sealer(WebhookKeys(k))
    return box
