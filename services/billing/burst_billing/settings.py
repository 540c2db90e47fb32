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
    #: A container is a runaway (``container.runaway_detected``) when an input has run, or
    #: the container has been stopping, for longer than this multiple of the function's
    #: timeout (by its agent's heartbeat clock).
    runaway_factor: float = 2.0
    #: Seconds of calls (stream time) over which a function's share of failed calls is
    #: measured for ``function.error_rate_exceeded``.
    error_rate_window: float = 300.0
    #: The share of failed calls (0..1] at or above which the event fires, once per crossing.
    error_rate_threshold: float = 0.5
    #: Fewest calls in the window for the share to count (one failure of one call is not a
    #: rate).
    error_rate_min_calls: int = 10
    #: Seconds between re-checks of every function's window as calls age out of it.
    error_rate_interval: float = 5.0
    #: Seconds between reads of the metering records that arrived since the last (in
    #: batches): the agents count calls per container and metering interval, so a crossing
    #: is seen within about one metering interval plus this long of its calls.
    error_rate_poll: float = 0.25
