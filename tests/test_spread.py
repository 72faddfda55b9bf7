"""The stage loop's per-micro-batch histogram (``pipeline/spread.py``)."""

from __future__ import annotations

import pickle
import random
import statistics

import pytest

from pipedbn.pipeline.runner import StageStats
from pipedbn.pipeline.spread import BINS, Spread


def test_quantiles_match_the_exact_ones_within_a_bin() -> None:
    rng = random.Random(0)
    # a typical micro-batch near 600 µs, and 2% stalls of 4-8 ms (a missed timer tick)
    xs = [rng.gauss(600e-6, 40e-6) for _ in range(4900)] + [rng.uniform(4e-3, 8e-3)
                                                            for _ in range(100)]
    s = Spread()
    for x in xs:
        s.add(x)
    xs.sort()
    assert s.n == len(xs)
    assert s.quantile(0.5) == pytest.approx(statistics.median(xs), rel=0.006)
    assert s.quantile(0.99) == pytest.approx(xs[int(0.99 * len(xs))], rel=0.006)
    assert s.quantile(0.5) < statistics.fmean(xs)  # the stalls move the mean only


def test_memory_is_bounded_and_extremes_land_in_the_end_bins() -> None:
    s = Spread()
    for x in (0.0, 1e-12, 5e4):
        s.add(x)
    assert len(s.counts) == BINS and s.counts[0] == 2 and s.counts[-1] == 1
    assert Spread().quantile(0.5) is None


def test_stage_stats_report_the_quantiles_and_survive_the_gather() -> None:
    stats = StageStats(0, 0, [0])
    for x in (1e-3, 2e-3, 3e-3):
        stats.cycles.add(x)
        stats.steps.add(x / 2)
    out = pickle.loads(pickle.dumps(stats)).as_dict()  # gather_object pickles it
    assert "cycles" not in out and "steps" not in out
    assert out["cycle_p50_s"] == pytest.approx(2e-3, rel=0.006)
    assert out["step_p50_s"] == pytest.approx(1e-3, rel=0.006)
    assert out["cycle_p99_s"] == pytest.approx(3e-3, rel=0.006)
