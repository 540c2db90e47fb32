"""The price table: a TOML file named by ``BURST_PRICES``, or the seed's rates.

Every key is optional; a missing one keeps its default (:class:`burst_core.ledger.Rates`).
A GPU type listed in ``[gpu_second]`` replaces that type's rate and adds new types; the
others keep the seed's rates. Example::

    cpu_core_second = 0.000013      # USD per CPU core-second
    memory_gib_second = 0.00000222  # USD per GiB-second of memory (default 0: the seed
                                    # prices CPU only)
    spot_factor = 0.5               # multiplier on the GPU part on spot agents

    [gpu_second]                    # USD per GPU-second, by type
    H100 = 0.00120
    "A100-80GB" = 0.000833

Prices apply to records as they are folded: change them and restart billing, and records
folded from then on use the new table (a replay from sequence 1 re-prices everything).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from burst_core import ledger

_KEYS = ("cpu_core_second", "memory_gib_second", "spot_factor", "gpu_second")


class PriceTableError(ValueError):
    """The price table cannot be used; the message names the file, key and value."""


def _rate(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceTableError(f"{where}: {key} = {value!r} is not a number")
    if not value >= 0:
        raise PriceTableError(f"{where}: {key} = {value!r} must be >= 0")
    return float(value)


def parse(table: dict[str, Any], where: str = "price table") -> ledger.Rates:
    """Rates from a parsed TOML table; raises :class:`PriceTableError` naming a bad key."""
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise PriceTableError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    kw: dict[str, Any] = {}
    for key in ("cpu_core_second", "memory_gib_second", "spot_factor"):
        if key in table:
            kw[key] = _rate(where, key, table[key])
    if "spot_factor" in kw and kw["spot_factor"] > 1:
        raise PriceTableError(
            f"{where}: spot_factor = {kw['spot_factor']!r} must be between 0 and 1")
    gpus = dict(ledger.DEFAULT_GPU_SECOND)
    if "gpu_second" in table:
        raw = table["gpu_second"]
        if not isinstance(raw, dict):
            raise PriceTableError(
                f"{where}: gpu_second must be a table of GPU type = rate, got {raw!r}")
        for gpu, value in raw.items():
            gpus[gpu.strip().upper()] = _rate(where, f"gpu_second.{gpu}", value)
    try:
        return ledger.Rates(gpu_second=gpus, **kw)
    except ValueError as e:
        raise PriceTableError(f"{where}: {e}") from None


def load(path: str) -> ledger.Rates:
    """The rates of the TOML file at ``path``, or the defaults when ``path`` is empty."""
    if not path:
        return ledger.Rates()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PriceTableError(f"price table {path}: cannot read it ({e.strerror})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PriceTableError(f"price table {path}: not valid TOML ({e})") from None
    return parse(table, f"price table {path}")
