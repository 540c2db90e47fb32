"""`burst budget` shows small limits by their value and budgets without thresholds plainly."""

from __future__ import annotations

from burst.cli.budget import alerts_text, usd


def test_limits_below_a_cent_keep_their_digits() -> None:
    assert usd(0.004) == "$0.004"
    assert usd(0.000001) == "$0.000001"
    assert usd(0) == "$0.00"
    assert usd(25) == "$25.00"
    assert usd(1234.5) == "$1,234.50"


def test_no_thresholds_reads_no_alerts() -> None:
    assert alerts_text([]) == "no alerts"
    assert alerts_text([50, 80, 100]) == "alerts at 50,80,100%"
