"""The dashboard's session cookies, CSRF tokens, redirects and charts (no cluster)."""

from __future__ import annotations

import re

from burst_gateway import dashboard, dashboard_charts

KEY = b"k" * 32
HASH = "ab" * 32


def test_a_session_names_its_token_hash_until_it_expires() -> None:
    value = dashboard.make_session(KEY, HASH, ttl=60, now=1000.0)
    assert dashboard.session_hash(KEY, value, now=1059.0) == HASH
    assert dashboard.session_hash(KEY, value, now=1061.0) is None


def test_an_altered_or_foreign_session_is_refused() -> None:
    value = dashboard.make_session(KEY, HASH, ttl=60, now=1000.0)
    exp, token_hash, sig = value.split(".")
    assert dashboard.session_hash(KEY, f"{int(exp) + 999}.{token_hash}.{sig}", now=1000) is None
    assert dashboard.session_hash(KEY, f"{exp}.{'cd' * 32}.{sig}", now=1000) is None
    assert dashboard.session_hash(b"x" * 32, value, now=1000) is None
    assert dashboard.session_hash(KEY, "garbage", now=1000) is None
    assert dashboard.session_hash(KEY, "", now=1000) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    a = dashboard.make_session(KEY, HASH, ttl=60, now=1000.0)
    b = dashboard.make_session(KEY, HASH, ttl=60, now=1001.0)
    assert dashboard.csrf_token(KEY, a) == dashboard.csrf_token(KEY, a)
    assert dashboard.csrf_token(KEY, a) != dashboard.csrf_token(KEY, b)


def test_sign_in_only_returns_to_a_dashboard_page() -> None:
    assert dashboard._safe_next("/dashboard/calls") == "/dashboard/calls"
    for bad in ("https://evil.example/", "//evil.example/dashboard", "/v1/apps",
                "/dashboard\\..\\x", "/dashboard//evil"):
        assert dashboard._safe_next(bad) == "/dashboard"


def test_charts_are_inline_svg_scaled_to_their_data() -> None:
    spark = str(dashboard_charts.sparkline([0, 2, 4], width=30, height=12, label="a<b"))
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', spark)]
    assert heights == [5.0, 10.0]  # the tallest fills the chart (less its axis)
    assert "a&lt;b" in spark and "<script" not in spark
    chart = str(dashboard_charts.spend_chart([("2026-01-01", 1.0), ("2026-01-02", 3.0)],
                                             limit=10.0))
    assert 'class="limit"' in chart and "budget $10" in chart
    assert re.search(r'<polyline class="total" points="[^"]+"', chart)
    meter = str(dashboard_charts.meter(9, 10))
    assert 'class="hot"' in meter and 'width="108.0"' in meter
