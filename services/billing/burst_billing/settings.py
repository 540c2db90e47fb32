from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class BillingSettings(CommonSettings):
    #: Built-in default rate per CPU core-second until the price table lands (seed's rate).
    cpu_core_second: float = 0.000013
    #: Seconds between ledger snapshots saved to KV.
    snapshot_interval: float = 1.0
    #: Seconds the billing lease lasts without renewal; renewed every third of it. Another
    #: replica takes over at most this long after the holder dies without releasing it.
    lease_ttl: float = 10.0
