"""Webhook delivery: signed POSTs from the durable queue of pending deliveries.

Every billing replica runs a :class:`WebhookSender` on the shared durable consumer of
``BURST_WEBHOOKS``; a delivery stays in the stream until it is delivered or given up, so
no alert is lost while a receiver is down or billing restarts. A failed attempt is
redelivered by JetStream after an exponential backoff (``webhook_retry_base`` * 2^n, at
most ``webhook_retry_max``), up to ``webhook_max_attempts``; every attempt is recorded in
the delivery log (KV ``burst_webhook_log``). A delivery the log already shows finished is
acked without sending again (the same event emitted twice).

Targets: the host is resolved at delivery time and every address it resolves to must be
allowed; the request then goes to that exact address (a second lookup could answer
differently). Link-local and cloud-metadata addresses are always refused; loopback,
private and other non-public ranges only when ``webhook_allow_networks`` lists them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from burst import webhooks as signing
from burst_core import bus, logs, names, sealing
from burst_core.schemas import (
    WebhookDeliveryDecoder,
    WebhookEndpointDecoder,
    WebhookLogEntry,
    WebhookLogEntryDecoder,
    encode,
)
from burst_core.secrets import KeyRingError

log = logs.get("burst.billing.webhooks")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Never a webhook target, whatever the allowlist says.
ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",  # link-local, incl. 169.254.169.254 (AWS, GCP, Azure metadata)
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "0.0.0.0/8", "::/128",  # "this host"
))
_SHORTHANDS = {"loopback": ("127.0.0.0/8", "::1/128"),
               "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")}


class TargetRefused(Exception):
    """The endpoint's address is not one Burst may send to."""


def parse_allow(spec: str) -> tuple[IPNetwork, ...]:
    """``webhook_allow_networks``: CIDRs and the shorthands ``loopback``, ``private``."""
    out: list[IPNetwork] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        for cidr in _SHORTHANDS.get(item, (item,)):
            try:
                out.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ValueError(f"webhook_allow_networks: {item!r} is not a CIDR, "
                                 "'loopback' or 'private'") from None
    return tuple(out)


def check_address(ip: IPAddress, allow: Sequence[IPNetwork]) -> None:
    """Raise :class:`TargetRefused` unless ``ip`` may receive webhooks."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in n for n in ALWAYS_REFUSED if n.version == ip.version):
        raise TargetRefused(f"{ip} is link-local or a cloud metadata address: always refused")
    public = ip.is_global and not ip.is_multicast
    if not public and not any(ip in n for n in allow if n.version == ip.version):
        raise TargetRefused(f"{ip} is a loopback, private or reserved address not in the "
                            "operator's allowlist (BURST_WEBHOOK_ALLOW_NETWORKS)")


async def resolve(url: str, allow: Sequence[IPNetwork]) -> tuple[str, int, str]:
    """``(address, port, host)`` to send to, every resolved address checked."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise TargetRefused(f"{url!r}: only http and https URLs")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            u.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConnectionError(f"cannot resolve {u.hostname}: {e}") from None
    addrs = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for ip in addrs:
        check_address(ip, allow)
    return str(addrs[0]), port, u.hostname


async def post(url: str, addr: str, port: int, host: str, headers: dict[str, str],
               body: bytes, timeout: float) -> int:
    """POST ``body`` to ``url`` over a connection to ``addr``; returns the status code."""
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context() if u.scheme == "https" else None
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")

    async def go() -> int:
        reader, writer = await asyncio.open_connection(
            addr, port, ssl=ctx, server_hostname=host if ctx else None)
        try:
            default_port = 443 if ctx else 80
            host_hdr = host if port == default_port else f"{host}:{port}"
            lines = [f"POST {path} HTTP/1.1", f"Host: {host_hdr}",
                     "Content-Type: application/json", f"Content-Length: {len(body)}",
                     "User-Agent: burst-webhooks/1", "Connection: close",
                     *(f"{k}: {v}" for k, v in headers.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.decode("latin-1").split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ConnectionError(f"malformed HTTP answer {status_line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


class WebhookSender:
    """Delivers pending webhooks; see the module docstring."""

    def __init__(self, js: JetStreamContext, *, allow: str, retry_base: float,
                 retry_max: float, max_attempts: int, timeout: float,
                 keys_file: str = "", concurrency: int = 8) -> None:
        self.js = js
        #: The derived webhook keys (never a master key) that open the endpoints' sealed
        #: secrets (see burst_core.sealing).
        self.keys_file = keys_file
        self.allow = parse_allow(allow)
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.concurrency = concurrency
        self.delivered = 0
        self._consumer: bus.Consumer | None = None

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``."""
        return float(min(self.retry_max, self.retry_base * 2 ** max(0, attempt - 1)))

    async def start(self) -> None:
        self._log = await self.js.key_value(names.KV_WEBHOOK_LOG)
        self._endpoints = await self.js.key_value(names.KV_WEBHOOKS)
        self._consumer = bus.Consumer(
            self.js, names.STREAM_WEBHOOKS, names.CONSUMER_WEBHOOK_DELIVERY, self.handle,
            ack_wait=max(30.0, self.timeout * 3), batch=16, concurrency=self.concurrency,
            name="webhook_delivery",
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _record(self, entry: WebhookLogEntry, **changes: object) -> None:
        new = msgspec.structs.replace(entry, updated_at=time.time(), **changes)
        try:
            await self._log.put(names.webhook_log_key(entry.workspace, entry.delivery_id),
                                encode(new))
        except Exception as e:  # the log is a record, not the queue: keep delivering
            log.warning("delivery_log_failed", delivery_id=entry.delivery_id, error=repr(e))

    async def handle(self, msg: Msg) -> None:
        try:
            d = WebhookDeliveryDecoder.decode(msg.data)
        except msgspec.DecodeError as e:
            raise bus.Reject(f"undecodable delivery: {e}") from e
        key = names.webhook_log_key(d.workspace, d.delivery_id)
        raw, _ = await bus.kv_get(self._log, key)
        entry = (WebhookLogEntryDecoder.decode(raw) if raw is not None else WebhookLogEntry(
            delivery_id=d.delivery_id, endpoint_id=d.endpoint_id, workspace=d.workspace,
            event_type=d.event_type, created_at=d.created_at))
        if entry.status in ("delivered", "failed", "refused"):
            return  # finished before: the same event queued again
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        dlog = log.bind(delivery_id=d.delivery_id, endpoint_id=d.endpoint_id,
                        event=d.event_type, attempt=attempt)
        ep_raw, _ = await bus.kv_get(self._endpoints,
                                     names.webhook_key(d.workspace, d.endpoint_id))
        if ep_raw is None:
            await self._record(entry, status="failed", last_error="endpoint removed")
            return
        ep = WebhookEndpointDecoder.decode(ep_raw)
        try:
            secret = (sealing.for_webhook_keys(self.keys_file).open(ep.secret)
                      if ep.secret.startswith(sealing.PREFIX) else ep.secret)
        except (sealing.SealingError, KeyRingError) as e:
            # Retried (up to webhook_max_attempts): the gateway writes a new key's webhook
            # key, and reseals sealed:v1 values, when it starts or rotates.
            dlog.error("webhook_secret_unreadable", error=str(e))
            await self._retry(entry, ep.url, attempt, 0, str(e), dlog)
            return
        try:
            addr, port, host = await resolve(ep.url, self.allow)
        except TargetRefused as e:
            dlog.warning("webhook_target_refused", url=ep.url, reason=str(e))
            await self._record(entry, status="refused", url=ep.url, attempts=attempt,
                               last_error=str(e))
            return
        except Exception as e:
            await self._retry(entry, ep.url, attempt, 0, f"resolve: {e}", dlog)
            return
        code, error = 0, ""
        try:
            code = await post(ep.url, addr, port, host,
                              signing.headers(secret, d.delivery_id, d.body), d.body,
                              self.timeout)
        except Exception as e:
            error = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
        if 200 <= code < 300:
            self.delivered += 1
            dlog.info("webhook_delivered", url=ep.url, status=code)
            await self._record(entry, status="delivered", url=ep.url, attempts=attempt,
                               last_status_code=code, last_error="")
            return
        await self._retry(entry, ep.url, attempt, code, error or f"HTTP {code}", dlog)

    async def _retry(self, entry: WebhookLogEntry, url: str, attempt: int, code: int,
                     error: str, dlog: Any) -> None:
        if attempt >= self.max_attempts:
            dlog.warning("webhook_failed", url=url, error=error)
            await self._record(entry, status="failed", url=url, attempts=attempt,
                               last_status_code=code, last_error=error)
            return
        delay = self.backoff(attempt)
        dlog.info("webhook_retrying", url=url, error=error, retry_in=delay)
        await self._record(entry, status="retrying", url=url, attempts=attempt,
                           last_status_code=code, last_error=error)
        raise bus.Retry(delay, error)
