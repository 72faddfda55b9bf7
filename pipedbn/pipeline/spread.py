"""A stage's per-micro-batch times in bounded memory: a log-binned histogram, so that a run of
any length can say what a typical micro-batch took (the median) and how long its stalls were
(the 99th percentile) beside the means that ``StageStats`` totals give.

The means and the median tell different stories on a shared machine: a rare wake-up that
waits for the host's next timer tick (4 ms and more on these VMs) moves the mean, never the
median. ``tools/bench_overhead.py`` reports both against gloo's own round trip.
"""

from __future__ import annotations

import math

PER_DECADE = 200
"""Bins per factor of ten: a quantile is within 0.6% of the true value."""
LOW = 1e-7
"""Seconds below this count in the first bin."""
BINS = 10 * PER_DECADE  # 1e-7 s to 1e3 s


class Spread:
    """Durations in seconds; ``quantile`` from the histogram (the geometric middle of a bin)."""

    def __init__(self) -> None:
        self.counts = [0] * BINS
        self.n = 0

    def add(self, seconds: float) -> None:
        k = int(math.log10(seconds / LOW) * PER_DECADE) if seconds > LOW else 0
        self.counts[min(max(k, 0), BINS - 1)] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 < q < 1) of the durations added; None if there are none."""
        if not self.n:
            return None
        rank, seen = q * self.n, 0
        for k, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return LOW * 10 ** ((k + 0.5) / PER_DECADE)
        raise AssertionError("unreachable: the counts add up to n")
