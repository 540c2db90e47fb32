"""User secrets at rest: envelope encryption under a ring of master keys.

Each secret version gets a fresh 256-bit data key; its values (a JSON object) are sealed
with that key (AES-GCM, the workspace as associated data, so an envelope copied into
another workspace does not open), and the data key is wrapped (AES-GCM) by a key
*derived* from a master key. Master keys never sit in NATS or Redis: they come from
``BURST_MASTER_KEYS`` (comma-separated, newest first) or else from ``$BURST_HOME/secrets.key``
(one key a line, newest first; made by the first service that needs it, as
``burst_core.sealing`` always did).

One key is derived per purpose (HKDF-SHA256 with the purpose as ``info``): secrets and
webhook signing secrets are never sealed under the same key, and neither is the master
key itself. An envelope names the master key that wrapped it by a key id (derived too,
never the key), so after a rotation every key of the ring still opens what it wrapped, and
:func:`rewrap` moves a data key under the newest key without touching the values.

Example::

    ring = KeyRing.load("/root/.burst")
    env = ring.seal_values("ws", {"TOKEN": "s3cr3t"})   # "envelope:v1:..."
    ring.open_values("ws", env)                          # {"TOKEN": "s3cr3t"}
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from burst_core import sealing

ENV_VAR = "BURST_MASTER_KEYS"
#: The derived webhook-sealing keys (never a master key), one ``<key id>:<key>`` a line,
#: newest first: what billing opens webhook signing secrets with. The gateway writes it
#: from its ring (at start and on a rotation), and so does the compose init service.
WEBHOOK_KEYS_FILE = "webhook.keys"
ENVELOPE_PREFIX = "envelope:v1:"
#: Least master key material accepted (bytes of its text): a short passphrase is refused.
MIN_KEY_CHARS = 32

PURPOSE_SECRETS = b"burst/secrets/v1"
PURPOSE_WEBHOOKS = b"burst/webhook-signing/v1"
_PURPOSE_KEY_ID = b"burst/key-id/v1"
_WRAP_AAD = b"burst data key"
_PURPOSE_REPLY = b"burst/secrets-reply/v1"
_NONCE = 12


class KeyRingError(Exception):
    """No usable master key, or an envelope that no key of the ring opens."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def new_master_key() -> str:
    """A fresh master key, as text (the form ``secrets.key`` and BURST_MASTER_KEYS hold)."""
    return base64.urlsafe_b64encode(_random.token_bytes(32)).decode()


@dataclass(frozen=True)
class MasterKey:
    """One master key's derived keys; the master key itself is not kept."""

    kid: str
    secrets_key: bytes  # wraps data keys
    webhook_key: bytes  # a Fernet key: seals webhook signing secrets
    legacy_fernet: Fernet | None  # the master used directly (sealed:v1 values, before HKDF)

    @classmethod
    def of(cls, text: str) -> MasterKey:
        raw = text.encode()
        legacy: Fernet | None
        try:
            legacy = Fernet(raw)
        except ValueError:
            legacy = None
        return cls(kid=_derive(raw, _PURPOSE_KEY_ID)[:6].hex(),
                   secrets_key=_derive(raw, PURPOSE_SECRETS),
                   webhook_key=base64.urlsafe_b64encode(_derive(raw, PURPOSE_WEBHOOKS)),
                   legacy_fernet=legacy)


@dataclass(frozen=True)
class WebhookKey:
    """A derived webhook-sealing key alone (what billing holds): it opens ``sealed:v2:``
    values of its key id and nothing else."""

    kid: str
    webhook_key: bytes
    legacy_fernet: Fernet | None = None  # never: a master key itself is not held


def webhook_keys_path(home: str | os.PathLike[str], setting: str = "") -> Path:
    """Where the derived webhook keys are: the ``BURST_WEBHOOK_KEYS_FILE`` setting, else
    ``$BURST_HOME/webhook.keys``."""
    return Path(setting) if setting else Path(home) / WEBHOOK_KEYS_FILE


def write_webhook_keys(ring: KeyRing, path: str | os.PathLike[str]) -> None:
    """Write the ring's derived webhook keys (newest first) to ``path`` (mode 0600,
    replaced atomically); unchanged contents are not rewritten."""
    path = Path(path)
    text = "".join(f"{k.kid}:{k.webhook_key.decode()}\n" for k in ring.keys)
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class WebhookKeys:
    """The derived webhook keys of a file :func:`write_webhook_keys` wrote; read again
    when a value names a key id it does not know (the gateway added a key)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.keys: list[WebhookKey] = []
        self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self.keys = []
            return
        keys: list[WebhookKey] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            kid, sep, key = line.strip().partition(":")
            try:
                if not (sep and kid):
                    raise ValueError(kid)
                Fernet(key.encode())
            except ValueError:
                # Never the key itself in a message: where it is only.
                raise KeyRingError(f"{self.path} line {n} is not '<key id>:<webhook key>' "
                                   "(the gateway or the compose init service writes this "
                                   "file)") from None
            keys.append(WebhookKey(kid=kid, webhook_key=key.encode()))
        self.keys = keys

    def reload(self) -> bool:
        before = [k.kid for k in self.keys]
        self._read()
        return [k.kid for k in self.keys] != before

    @property
    def newest(self) -> WebhookKey:
        if not self.keys:
            self._read()
        if not self.keys:
            raise KeyRingError(f"no webhook key in {self.path} yet (the gateway writes it "
                               "when it starts)")
        return self.keys[0]

    def by_kid(self, kid: str) -> WebhookKey:
        for attempt in range(2):
            for k in self.keys:
                if k.kid == kid:
                    return k
            if attempt == 0:
                self._read()
        raise KeyRingError(f"sealed under master key {kid}, whose webhook key is not in "
                           f"{self.path} (the gateway writes it from its key ring)")


class _Envelope(msgspec.Struct, array_like=True):
    kid: str
    wrapped: bytes  # nonce + AES-GCM(data key) under the kid's secrets key
    data: bytes  # nonce + AES-GCM(JSON of the values) under the data key


_env_decoder = msgspec.msgpack.Decoder(_Envelope)


def _read_ring_text(home: str | os.PathLike[str] | None,
                    create: bool = True) -> tuple[list[str], str]:
    """The master keys' texts, newest first, and where they came from."""
    env = os.environ.get(ENV_VAR, "")
    if env.strip():
        return [k.strip() for k in env.split(",") if k.strip()], ENV_VAR
    if home is None:
        raise KeyRingError(f"no master key: set {ENV_VAR} or BURST_HOME")
    if not create and not sealing.key_path(home).exists():
        raise KeyRingError(f"no master key: set {ENV_VAR} or put the cluster's key ring in "
                           f"{sealing.key_path(home)} (a fresh key made here would not open "
                           "what other machines sealed)")
    sealing.load_or_create_key(home)
    path = sealing.key_path(home)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return lines, str(path)


class KeyRing:
    """The master keys a service holds, newest first (see the module docstring)."""

    def __init__(self, texts: list[str], source: str = "", home: str | None = None) -> None:
        if not texts:
            raise KeyRingError(f"no master key in {source or ENV_VAR}")
        for i, t in enumerate(texts):
            if len(t) < MIN_KEY_CHARS:
                # Never the key itself in a message: its position and length only.
                raise KeyRingError(f"master key {i + 1} of {source or ENV_VAR} is {len(t)} "
                                   f"characters long: at least {MIN_KEY_CHARS} are needed")
        self.keys = [MasterKey.of(t) for t in texts]
        self.source = source
        self._home = home
        self._mtime = self._stamp()

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None, create: bool = True) -> KeyRing:
        """The ring of BURST_MASTER_KEYS, else of ``home``'s key file (made when missing,
        unless ``create`` is False)."""
        texts, source = _read_ring_text(home, create)
        return cls(texts, source, str(home) if home is not None else None)

    def _stamp(self) -> bytes:
        """What the key file holds, digested (not its mtime: two writes within one tick of
        the file system's clock would look the same)."""
        if self.source == ENV_VAR or self._home is None:
            return b""
        try:
            return hashlib.sha256(sealing.key_path(self._home).read_bytes()).digest()
        except OSError:
            return b""

    def reload(self) -> bool:
        """Read the ring again (a key was added by ``burst secret rotate-key``); whether it
        changed. BURST_MASTER_KEYS is read at start only: a service there is restarted."""
        if self.source == ENV_VAR or self._home is None or self._stamp() == self._mtime:
            return False
        fresh = KeyRing.load(self._home)
        changed = [k.kid for k in fresh.keys] != [k.kid for k in self.keys]
        self.keys, self._mtime = fresh.keys, fresh._mtime
        return changed

    @property
    def newest(self) -> MasterKey:
        return self.keys[0]

    def by_kid(self, kid: str) -> MasterKey:
        for k in self.keys:
            if k.kid == kid:
                return k
        self.reload()
        for k in self.keys:
            if k.kid == kid:
                return k
        raise KeyRingError(f"sealed under master key {kid}, which is not in the key ring "
                           f"({self.source}): add that key back (after the newest)")

    # ---- envelopes -----------------------------------------------------------------
    def seal_values(self, workspace: str, values: dict[str, str]) -> str:
        """An envelope of ``values``: a fresh data key, wrapped by the newest master key."""
        data_key = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(_NONCE), os.urandom(_NONCE)
        plain = json.dumps(values, sort_keys=True).encode()
        k = self.newest
        env = _Envelope(kid=k.kid,
                        wrapped=n1 + AESGCM(k.secrets_key).encrypt(n1, data_key, _WRAP_AAD),
                        data=n2 + AESGCM(data_key).encrypt(n2, plain, workspace.encode()))
        return ENVELOPE_PREFIX + base64.b64encode(msgspec.msgpack.encode(env)).decode()

    def _decode(self, sealed: str) -> _Envelope:
        if not sealed.startswith(ENVELOPE_PREFIX):
            raise KeyRingError("not a sealed envelope")
        try:
            return _env_decoder.decode(base64.b64decode(sealed[len(ENVELOPE_PREFIX):]))
        except (ValueError, msgspec.DecodeError):
            raise KeyRingError("damaged envelope") from None

    def _unwrap(self, env: _Envelope) -> bytes:
        k = self.by_kid(env.kid)
        try:
            return AESGCM(k.secrets_key).decrypt(env.wrapped[:_NONCE], env.wrapped[_NONCE:],
                                                 _WRAP_AAD)
        except InvalidTag:
            raise KeyRingError(f"the data key does not open under master key {env.kid}: "
                               "the envelope is damaged") from None

    def open_values(self, workspace: str, sealed: str) -> dict[str, str]:
        env = self._decode(sealed)
        data_key = self._unwrap(env)
        try:
            plain = AESGCM(data_key).decrypt(env.data[:_NONCE], env.data[_NONCE:],
                                             workspace.encode())
        except InvalidTag:
            raise KeyRingError("the values do not open: the envelope is damaged or belongs "
                               "to another workspace") from None
        out: dict[str, str] = json.loads(plain)
        return out

    def needs_rewrap(self, sealed: str) -> bool:
        return self._decode(sealed).kid != self.newest.kid

    def rewrap(self, sealed: str) -> str:
        """The same envelope with its data key wrapped by the newest master key (the values
        are not decrypted)."""
        env = self._decode(sealed)
        data_key = self._unwrap(env)
        k = self.newest
        n = os.urandom(_NONCE)
        out = _Envelope(kid=k.kid, wrapped=n + AESGCM(k.secrets_key).encrypt(n, data_key,
                                                                             _WRAP_AAD),
                        data=env.data)
        return ENVELOPE_PREFIX + base64.b64encode(msgspec.msgpack.encode(out)).decode()


def add_master_key(home: str | os.PathLike[str]) -> str:
    """Put a fresh master key first in ``$BURST_HOME/secrets.key`` (the older ones stay,
    after it, so what they wrapped still opens); returns its key id."""
    sealing.load_or_create_key(home)
    path = Path(sealing.key_path(home))
    old = path.read_text()
    key = new_master_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n" + old.lstrip())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return MasterKey.of(key).kid


# ---- the answer to an agent: sealed to the key it sent -----------------------------------
def reply_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A one-use key pair for one fetch: the private key, and the public key's bytes."""
    priv = X25519PrivateKey.generate()
    return priv, priv.public_key().public_bytes_raw()


def _reply_key(priv: X25519PrivateKey, peer: bytes) -> bytes:
    shared = priv.exchange(X25519PublicKey.from_public_bytes(peer))
    return _derive(shared, _PURPOSE_REPLY)


def seal_reply(peer: bytes, values: dict[str, str]) -> tuple[bytes, bytes]:
    """(our public key, sealed values) readable only with the private key of ``peer``."""
    priv, pub = reply_keypair()
    n = os.urandom(_NONCE)
    return pub, n + AESGCM(_reply_key(priv, peer)).encrypt(n, json.dumps(values).encode(), pub)


def open_reply(priv: X25519PrivateKey, server_key: bytes, sealed: bytes) -> dict[str, str]:
    try:
        plain = AESGCM(_reply_key(priv, server_key)).decrypt(sealed[:_NONCE], sealed[_NONCE:],
                                                             server_key)
    except (InvalidTag, ValueError):
        raise KeyRingError("the gateway's answer does not open: damaged in transit") from None
    out: dict[str, str] = json.loads(plain)
    return out
