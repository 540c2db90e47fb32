"""NATS for a cluster that other machines join: its configuration, TLS and users.

``burst up`` writes nats-server's configuration with :func:`nats_config` (the one place
that generates it; a multi-node cluster extends it). Without ``--listen`` NATS binds to
127.0.0.1 with no TLS and no users, as before. With ``--listen ADDR`` it binds to ADDR,
serves TLS with a certificate of the cluster's own CA (created once per home under
``$BURST_HOME/tls/``) and admits only its users, one per role:

- ``services``: the gateway, scheduler and billing (everything);
- ``agent-*``: one per join bundle (``burst agent token``) and one for the local agent.
  An agent cannot write deployments or budgets, cannot read or write tokens or
  secrets, cannot change or delete streams, and cannot answer the gateway's secret
  requests (see :data:`AGENT_DENY_PUBLISH`);
- user containers get nothing: they never see NATS (the agent relays for them).

A join bundle (:func:`make_bundle`) is a JSON file with the CA certificate, one agent
user's credentials, the NATS URLs, the cluster id and an expiry, signed with the CA's
key: :func:`open_bundle` refuses a tampered or expired one with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from burst.exception import InvalidError

BUNDLE_VERSION = 1
SERVICES_USER = "services"
LOCAL_AGENT_USER = "agent-local"

#: What an agent may not publish (nor ask JetStream for): other roles' buckets.
AGENT_DENY_PUBLISH = [
    # writes of deployments and budgets, any access to tokens and secrets
    "$KV.burst_deployments.>", "$KV.burst_budgets.>",
    "$KV.burst_tokens.>", "$KV.burst_secrets.>",
    "$JS.API.DIRECT.GET.KV_burst_tokens.>", "$JS.API.DIRECT.GET.KV_burst_secrets.>",
    "$JS.API.STREAM.MSG.GET.KV_burst_tokens", "$JS.API.STREAM.MSG.GET.KV_burst_secrets",
    "$JS.API.CONSUMER.*.KV_burst_tokens.>", "$JS.API.CONSUMER.*.KV_burst_secrets.>",
    "$JS.API.CONSUMER.*.KV_burst_tokens", "$JS.API.CONSUMER.*.KV_burst_secrets",
    # no stream or bucket is created, changed, purged or deleted by an agent
    "$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>",
    # (the gateway answers secret requests; an agent asks, never answers)
]
AGENT_DENY_SUBSCRIBE = [
    "$KV.burst_tokens.>", "$KV.burst_secrets.>", "burst.secrets.fetch",
]


# ---- files ------------------------------------------------------------------------------
def tls_dir(home: Path) -> Path:
    return home / "tls"


def _users_path(home: Path) -> Path:
    return home / "nats" / "users.json"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_users(home: Path) -> dict[str, Any]:
    """The cluster id and NATS users of ``home`` (created on first use)."""
    path = _users_path(home)
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = {
        "cluster_id": "cl-" + secrets.token_hex(6),
        "users": {SERVICES_USER: {"password": secrets.token_hex(24), "role": "services"},
                  LOCAL_AGENT_USER: {"password": secrets.token_hex(24), "role": "agent"}},
    }
    _write_private(path, json.dumps(data, indent=1).encode())
    return data


@contextlib.contextmanager
def users_lock(home: Path) -> Iterator[None]:
    """Exclusive lock on ``home``'s users (``burst agent token``/``revoke`` and the
    supervisor's expiry check change them)."""
    path = _users_path(home).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def add_agent_user(home: Path, expires: float, agent: str = "",
                   credential_expires: float = 0.0) -> tuple[str, str]:
    """A new agent user (name, password), written to ``home``'s users: bound to the agent
    name ``agent`` when given (``burst agent revoke`` finds it by that name); its
    credentials stop working at ``credential_expires`` (0: never)."""
    with users_lock(home):
        data = read_users(home)
        name = "agent-" + secrets.token_hex(5)
        password = secrets.token_hex(24)
        user: dict[str, Any] = {"password": password, "role": "agent", "expires": expires}
        if agent:
            user["agent"] = agent
        if credential_expires:
            user["credential_expires"] = credential_expires
        data["users"][name] = user
        _write_private(_users_path(home), json.dumps(data, indent=1).encode())
    return name, password


def remove_users(home: Path, users: list[str]) -> list[str]:
    """Remove agent ``users`` from ``home``'s users (never the services' or the local
    agent's); returns those removed. nats-server forgets them at its next reload."""
    with users_lock(home):
        data = read_users(home)
        gone = [u for u in users if u in data["users"]
                and u not in (SERVICES_USER, LOCAL_AGENT_USER)]
        for u in gone:
            del data["users"][u]
        if gone:
            _write_private(_users_path(home), json.dumps(data, indent=1).encode())
    return gone


def users_of_agent(home: Path, agent: str) -> list[str]:
    """The agent users bound to agent name ``agent`` (by ``burst agent token --name``)."""
    return [name for name, u in read_users(home)["users"].items()
            if u.get("role") == "agent" and u.get("agent") == agent]


def expired_users(home: Path, now: float) -> list[str]:
    """Agent users whose credentials expired (``--credential-expires``) by ``now``."""
    return [name for name, u in read_users(home)["users"].items()
            if u.get("role") == "agent" and 0 < float(u.get("credential_expires") or 0) <= now]


def connected_users(monitor_port: int, connection_name: str,
                    timeout: float = 5.0) -> list[str]:
    """The users nats-server authenticated for its connections named ``connection_name``
    (its monitoring port, on this machine), as the server saw them."""
    import urllib.request

    url = f"http://127.0.0.1:{monitor_port}/connz?auth=true&limit=100000"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        conns = json.loads(resp.read()).get("connections") or []
    return sorted({str(c["authorized_user"]) for c in conns
                   if c.get("name") == connection_name and c.get("authorized_user")})


# ---- the CA -----------------------------------------------------------------------------
def check_listen(addr: str) -> str:
    """``addr`` if this machine can listen on it; else InvalidError naming it."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidError(f"invalid --listen {addr!r}: use an IP address of this machine "
                           "(e.g. 10.0.0.5, or 0.0.0.0 for all of them)") from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((addr, 0))
        except OSError as e:
            raise InvalidError(f"--listen {addr}: this machine has no such address ({e.strerror});"
                               " use one of its own addresses (`ip -brief addr`) or 0.0.0.0")\
                from None
    return addr


def ensure_tls(home: Path, addresses: list[str]) -> dict[str, Path]:
    """The cluster's CA (made once) and a server certificate for ``addresses`` (made
    again when they change); returns the paths of ``ca``, ``ca_key``, ``cert``, ``key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tls_dir(home)
    paths = {"ca": d / "ca.pem", "ca_key": d / "ca.key", "cert": d / "server.pem",
             "key": d / "server.key"}
    now = datetime.datetime.now(datetime.UTC)
    cluster_id = read_users(home)["cluster_id"]
    if not (paths["ca"].exists() and paths["ca_key"].exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"burst {cluster_id} CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        _write_private(paths["ca_key"], ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_private(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    wanted = sorted(set(addresses) | {"127.0.0.1"})
    sans_file = d / "server.sans"
    if paths["cert"].exists() and sans_file.exists() and \
            sans_file.read_text() == ",".join(wanted):
        return paths
    ca_key_loaded = serialization.load_pem_private_key(paths["ca_key"].read_bytes(), None)
    assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for a in wanted:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            sans.append(x509.DNSName(a))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        f"burst {cluster_id} nats")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key_loaded, hashes.SHA256()))
    _write_private(paths["key"], key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_private(paths["cert"], cert.public_bytes(serialization.Encoding.PEM))
    sans_file.write_text(",".join(wanted))
    return paths


# ---- nats-server's configuration --------------------------------------------------------
def _q(value: str) -> str:
    return json.dumps(value)


def _permissions(role: str) -> str:
    if role != "agent":
        return '{publish: ">", subscribe: ">"}'
    pub = ", ".join(_q(s) for s in AGENT_DENY_PUBLISH + ["burst.secrets.fetch.>"])
    sub = ", ".join(_q(s) for s in AGENT_DENY_SUBSCRIBE)
    return (f'{{publish: {{allow: [">"], deny: [{pub}]}}, '
            f'subscribe: {{allow: [">"], deny: [{sub}]}}}}')


def advertised_host(listen: str) -> str:
    """The address other machines reach a cluster listening on ``listen`` at: itself, or
    for 0.0.0.0 the address this machine's default route leaves from (no packet sent)."""
    if listen not in ("0.0.0.0", "::"):
        return listen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def nats_config(home: Path, *, host: str, port: int, monitor_port: int, server_name: str,
                secure: bool, extra: str = "", store_dir: str = "") -> str:
    """nats-server's configuration for this cluster (``secure``: TLS and users, as
    ``--listen`` wants). ``extra`` is appended (cluster routes of a multi-node setup);
    ``store_dir`` is JetStream's (default ``$BURST_HOME/nats``)."""
    lines = [
        f"server_name: {_q(server_name)}",
        f"host: {_q(host)}",
        f"port: {port}",
        f"http: {_q(f'127.0.0.1:{monitor_port}')}",
        f"jetstream {{ store_dir: {_q(store_dir or str(home / 'nats'))} }}",
    ]
    if secure:
        tls = ensure_tls(home, sorted({host, advertised_host(host)} - {"0.0.0.0", "::"}))
        lines.append(f"tls {{ cert_file: {_q(str(tls['cert']))}, key_file: "
                     f"{_q(str(tls['key']))}, ca_file: {_q(str(tls['ca']))}, timeout: 5 }}")
        users = read_users(home)["users"]
        entries = [f"  {{user: {_q(name)}, password: {_q(u['password'])}, "
                   f"permissions: {_permissions(u['role'])}}}" for name, u in users.items()]
        lines.append("authorization { users: [\n" + "\n".join(entries) + "\n] }")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def write_nats_config(home: Path, name: str = "nats", **kwargs: Any) -> Path:
    """Write ``home``'s nats.conf (``name``.conf: another node's, as ``nats-2.conf``) from
    :func:`nats_config` with ``kwargs`` (kept, so that :func:`rewrite_nats_config` can
    write it again with new users)."""
    _write_private(home / "nats" / f"{name}.args.json", json.dumps(kwargs).encode())
    path = home / "nats" / f"{name}.conf"
    _write_private(path, nats_config(home, **kwargs).encode())
    return path


def rewrite_nats_config(home: Path) -> list[Path]:
    """Write each node's configuration again as it was last written (with today's
    users)."""
    out = []
    for args in sorted((home / "nats").glob("*.args.json")):
        kwargs = json.loads(args.read_text())
        out.append(write_nats_config(home, args.name.removesuffix(".args.json"), **kwargs))
    return out


def reload_nats(home: Path) -> int:
    """Write the configuration of ``home``'s NATS nodes again with today's users, and
    have each running node reload it (SIGHUP): a removed user's connections are closed.
    Returns how many nodes were told."""
    import signal

    from burst._parts import is_alive, read_state

    rewrite_nats_config(home)
    state = read_state(home)
    told = 0
    for part in state.parts if state is not None else []:
        if (part.name == "nats" or part.name.startswith("nats-")) and \
                is_alive(part.pid, part.started):
            os.kill(part.pid, signal.SIGHUP)
            told += 1
    return told


def write_advertised(home: Path, nats_urls: list[str]) -> None:
    """Record the NATS URLs other machines reach (none: the cluster is not listening)."""
    _write_private(home / "nats" / "advertised.json", json.dumps(nats_urls).encode())


def read_advertised(home: Path) -> list[str]:
    path = home / "nats" / "advertised.json"
    try:
        urls = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [str(u) for u in urls] if isinstance(urls, list) else []


def user_url(url: str, user: str, password: str) -> str:
    """``tls://user:password@host:port`` for each of the comma-separated ``url``."""
    out = []
    for one in url.split(","):
        scheme, _, rest = one.strip().partition("://")
        out.append(f"{scheme}://{user}:{password}@{rest}")
    return ",".join(out)


# ---- join bundles -----------------------------------------------------------------------
def _signed_part(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "signature"},
                      sort_keys=True, separators=(",", ":")).encode()


def make_bundle(home: Path, nats_urls: list[str], ttl: float, agent: str = "",
                credential_ttl: float = 0.0) -> dict[str, Any]:
    """A new agent user and its join bundle, signed with the CA's key: for the agent
    named ``agent`` only, when given; its credentials expire after ``credential_ttl``
    seconds (0: never)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not (tls_dir(home) / "ca.pem").exists():
        raise InvalidError(f"{home} has no cluster CA: start the cluster with "
                           "`burst up --listen ADDR` first")
    tls = {"ca": tls_dir(home) / "ca.pem", "ca_key": tls_dir(home) / "ca.key"}
    now = time.time()
    user, password = add_agent_user(home, now + ttl, agent,
                                    now + credential_ttl if credential_ttl else 0.0)
    doc: dict[str, Any] = {
        "version": BUNDLE_VERSION, "cluster_id": read_users(home)["cluster_id"],
        "nats_urls": nats_urls, "user": user, "password": password,
        "issued_at": now, "expires_at": now + ttl, "ca_pem": tls["ca"].read_text(),
    }
    if agent:
        doc["agent"] = agent
    if credential_ttl:
        doc["credential_expires_at"] = now + credential_ttl
    key = serialization.load_pem_private_key(tls["ca_key"].read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    doc["signature"] = base64.b64encode(
        key.sign(_signed_part(doc), ec.ECDSA(hashes.SHA256()))).decode()
    return doc


def open_bundle(path: Path, now: float | None = None) -> dict[str, Any]:
    """The join bundle at ``path``, checked: well formed, signed by its CA, not expired.
    Raises InvalidError with the reason."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise InvalidError(f"join bundle {path}: cannot read it ({e.strerror})") from None
    except ValueError:
        raise InvalidError(f"join bundle {path} is not JSON: write it with `burst agent "
                           "token` on the control machine") from None
    need = {"version": int, "cluster_id": str, "nats_urls": list, "user": str,
            "password": str, "issued_at": float, "expires_at": float, "ca_pem": str,
            "signature": str}
    for field, tp in need.items():
        value = doc.get(field) if isinstance(doc, dict) else None
        if not isinstance(value, tp) and not (tp is float and isinstance(value, int)):
            raise InvalidError(f"join bundle {path}: field {field!r} is missing or not a "
                               f"{tp.__name__}: write it again with `burst agent token`")
    if doc["version"] != BUNDLE_VERSION:
        raise InvalidError(f"join bundle {path} has version {doc['version']}; this burst "
                           f"reads version {BUNDLE_VERSION}")
    try:
        ca = x509.load_pem_x509_certificate(doc["ca_pem"].encode())
        pub = ca.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(base64.b64decode(doc["signature"]), _signed_part(doc),
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, AssertionError):
        raise InvalidError(f"join bundle {path} was altered after `burst agent token` wrote "
                           "it (its signature does not match): ask for a new one") from None
    for field in ("agent", "credential_expires_at"):
        if field in doc and not isinstance(doc[field], (str if field == "agent" else (int, float))):
            raise InvalidError(f"join bundle {path}: field {field!r} is malformed: write it "
                               "again with `burst agent token`")
    now = time.time() if now is None else now
    if doc.get("credential_expires_at") and now > doc["credential_expires_at"]:
        ago = now - doc["credential_expires_at"]
        raise InvalidError(f"join bundle {path} (cluster {doc['cluster_id']}): its credentials "
                           f"expired {ago:.0f} s ago (--credential-expires): make a new one "
                           "with `burst agent token`")
    if now > doc["expires_at"]:
        ago = now - doc["expires_at"]
        raise InvalidError(f"join bundle {path} (cluster {doc['cluster_id']}) expired "
                           f"{ago:.0f} s ago: make a new one with `burst agent token`")
    return dict(doc)
