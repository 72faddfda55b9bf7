"""tools/simvalidate.py: which all-reduce it measures for a plan (no measuring)."""

from __future__ import annotations

from pathlib import Path

from pipedbn.balancer import param_count
from pipedbn.sim import load
from tools.simvalidate import STRAGGLER, bucket_of

ROOT = Path(__file__).resolve().parents[1]


def test_the_replicated_stages_bucket_is_its_parameters_and_a_flag() -> None:
    """The most replicated stage's replicas and bucket (its parameters and one flag, fp32),
    as ``sync_allreduce`` hands it to gloo; none without replicas."""
    cfg = load(ROOT / "configs" / "tiny.yaml", STRAGGLER)
    sizes = [64, 48, 40, 32, 16]
    params = [param_count(a, b) for a, b in zip(sizes, sizes[1:], strict=False)]
    assert bucket_of(cfg, 64, "0|1|2|3", 4) is None
    assert bucket_of(cfg, 64, "0-3@0-1", 2) == (2, 4 * (sum(params) + 1))
    assert bucket_of(cfg, 64, "0-1@0|2-3@1-2", 3) == (2, 4 * (params[2] + params[3] + 1))
