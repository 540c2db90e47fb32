from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class BillingSettings(CommonSettings):
    #: Path of the TOML price table (``BURST_PRICES``); empty: the seed's rates. See
    #: :mod:`burst_billing.prices`.
    prices: str = ""
    #: Seconds between ledger snapshots saved to KV.
    snapshot_interval: float = 1.0
    #: Seconds the billing lease lasts without renewal; renewed every third of it. Another
    #: replica takes over at most this long after the holder dies without releasing it.
    lease_ttl: float = 10.0
    #: Seconds between budget evaluations (spend, alerts, hard caps) by the lease holder.
    budget_interval: float = 1.0
    #: Seconds a container's dedupe marks are kept after its last record (stream time);
    #: records arriving later than this after they ended are refused as late. Changing it
    #: changes what a replay from sequence 1 prunes: keep it fixed for a cluster.
    dedupe_horizon: float = 24 * 3600.0
    #: Networks webhooks may be sent to besides public addresses: comma-separated CIDRs
    #: and the shorthands ``loopback`` and ``private``. Link-local and cloud-metadata
    #: addresses are refused regardless.
    webhook_allow_networks: str = ""
    #: Seconds before the first retry of a failed delivery; doubled for each retry after.
    webhook_retry_base: float = 5.0
    #: Longest wait between two attempts of one delivery.
    webhook_retry_max: float = 3600.0
    #: Attempts before a delivery is given up (and logged failed): 5 s doubling to an hour
    #: makes 20 attempts about 14 hours.
    webhook_max_attempts: int = 20
    #: Seconds one delivery attempt may take (connect, send, status line).
    webhook_timeout: float = 10.0
