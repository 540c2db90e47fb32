"""Secrets at rest: values sealed with a key kept in ``$BURST_HOME``, never in NATS.

A webhook endpoint's signing secret is stored in KV sealed (Fernet: AES-128-CBC with an
HMAC-SHA256, from ``cryptography``), so whoever can read the NATS store (a backup, the
``nats`` CLI) learns nothing that lets them forge a delivery. The key lives in
``$BURST_HOME/secrets.key`` (mode 0600, created by whichever service needs it first; the
user's containers never see ``$BURST_HOME``). Every service that seals or opens (the
gateway, billing) must see the same file: on several machines, copy it along with the
cluster's other credentials.

Example::

    box = Sealer.from_home("/root/.burst")
    stored = box.seal("whsec_...")   # "sealed:v1:gAAAAA..."
    box.open(stored)                 # "whsec_..."
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secrets.key"
PREFIX = "sealed:v1:"


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
    """Seals and opens secrets with one key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_home(cls, home: str | os.PathLike[str]) -> Sealer:
        return cls(load_or_create_key(home))

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret; a value stored before sealing existed is returned as it is."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SealingError("cannot open a sealed secret: it was sealed with another "
                               f"key than {KEY_FILE} in this BURST_HOME") from None


_by_home: dict[str, Sealer] = {}


def for_home(home: str | os.PathLike[str]) -> Sealer:
    """The sealer of ``home``'s key, loaded (or created) once per process."""
    k = str(Path(home).resolve())
    box = _by_home.get(k)
    if box is None:
        box = _by_home[k] = Sealer.from_home(k)
    return box
