"""The figures agents keep for ``/metrics``: histogram buckets shared by every agent and
the gateway that adds them up, and the helpers that fill them.

Labels stay bounded: figures are kept per function (and per agent, per GPU), never per
call or per input.
"""

from __future__ import annotations

import bisect
import math

from burst_core.schemas import Histogram

#: Upper bounds (seconds) of the latency, queue-time and cold-start histograms; the last
#: bucket is +Inf.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                              10.0, 30.0, 60.0, 300.0, math.inf)


def new_histogram() -> Histogram:
    return Histogram(counts=[0] * len(BUCKETS))


def observe(h: Histogram, seconds: float) -> None:
    """Count one observation (negative ones, from clocks apart, count as 0)."""
    value = max(0.0, seconds)
    h.counts[bisect.bisect_left(BUCKETS, value)] += 1
    h.total += value


def add(into: Histogram, other: Histogram) -> None:
    """Add ``other``'s counts to ``into`` (bucket lists of another length are skipped:
    an agent of another version)."""
    if len(other.counts) != len(into.counts):
        return
    for i, n in enumerate(other.counts):
        into.counts[i] += n
    into.total += other.total


def cumulative(h: Histogram) -> list[tuple[str, float]]:
    """Prometheus' buckets: (upper bound as text, count at or below it)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(BUCKETS, h.counts, strict=False):
        running += n
        out.append(("+Inf" if math.isinf(bound) else repr(bound), float(running)))
    return out
