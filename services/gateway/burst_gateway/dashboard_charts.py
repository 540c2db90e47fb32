"""Small charts for the dashboard, drawn on the server as inline SVG (no script, no
external asset: the page works offline and under a strict Content-Security-Policy)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def sparkline(values: list[int] | list[float], width: int = 160, height: int = 32,
              label: str = "") -> Markup:
    """Bars of ``values`` (oldest first), scaled to the largest."""
    n = max(1, len(values))
    top = max(values, default=0) or 1
    w = width / n
    bars = []
    for i, v in enumerate(values):
        h = (height - 2) * v / top
        if h > 0:
            bars.append(f'<rect x="{_fmt(i * w)}" y="{_fmt(height - h)}" '
                        f'width="{_fmt(max(1.0, w - 1))}" height="{_fmt(h)}"/>')
    title = f"<title>{escape(label)}</title>" if label else ""
    return Markup(f'<svg class="spark" role="img" aria-label="{escape(label)}" '
                  f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{title}'
                  f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" '
                  f'class="axis"/>{"".join(bars)}</svg>')


def meter(used: float, total: float, width: int = 120, label: str = "") -> Markup:
    """A filled bar: ``used`` of ``total``."""
    share = min(1.0, used / total) if total > 0 else 0.0
    cls = "hot" if share >= 0.9 else "warm" if share >= 0.7 else "ok"
    return Markup(f'<svg class="meter" role="img" aria-label="{escape(label)}" width="{width}" '
                  f'height="12" viewBox="0 0 {width} 12"><title>{escape(label)}</title>'
                  f'<rect class="bg" x="0" y="0" width="{width}" height="12"/>'
                  f'<rect class="{cls}" x="0" y="0" width="{_fmt(width * share)}" '
                  'height="12"/></svg>')


def spend_chart(days: list[tuple[str, float]], limit: float | None = None,
                width: int = 640, height: int = 200) -> Markup:
    """Daily spend (bars) and its running total (a line) over ``days``, with the budget
    ``limit`` (a dashed line) when there is one."""
    pad = 28
    n = max(1, len(days))
    running: list[float] = []
    acc = 0.0
    for _, cost in days:
        acc += cost
        running.append(acc)
    top = max([acc, *(c for _, c in days), limit or 0.0]) or 1.0
    inner_h = height - 2 * pad
    w = (width - 2 * pad) / n

    def y(v: float) -> float:
        return height - pad - inner_h * v / top

    parts = [f'<line class="axis" x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
             f'y2="{height - pad}"/>']
    pts = []
    for i, (day, cost) in enumerate(days):
        x = pad + i * w
        if cost > 0:
            parts.append(f'<rect class="bar" x="{_fmt(x + 1)}" y="{_fmt(y(cost))}" '
                         f'width="{_fmt(max(1.0, w - 2))}" height="{_fmt(y(0) - y(cost))}">'
                         f'<title>{escape(day)}: ${cost:.4f}</title></rect>')
        pts.append(f"{_fmt(x + w / 2)},{_fmt(y(running[i]))}")
    if pts:
        parts.append(f'<polyline class="total" points="{" ".join(pts)}"/>')
    if limit:
        parts.append(f'<line class="limit" x1="{pad}" y1="{_fmt(y(limit))}" x2="{width - pad}" '
                     f'y2="{_fmt(y(limit))}"/><text x="{width - pad}" y="{_fmt(y(limit) - 4)}" '
                     f'text-anchor="end">budget ${limit:g}</text>')
    if days:
        parts.append(f'<text x="{pad}" y="{height - 8}">{escape(days[0][0])}</text>'
                     f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">'
                     f'{escape(days[-1][0])}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 10}">${top:.4f}</text>')
    return Markup(f'<svg class="chart" role="img" aria-label="spend per day" width="{width}" '
                  f'height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>')
