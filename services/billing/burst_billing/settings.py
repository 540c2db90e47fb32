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
