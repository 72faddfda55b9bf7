"""tools/bench.py: the goals table it derives from the sections' results (no measuring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools import bench


def stage(busy: float, rate: float) -> dict[str, Any]:
    return {"busy_frac": busy, "samples_per_s": rate}


def results() -> dict[str, Any]:
    run = {"training_s": 10.0, "samples_per_s": 9000.0}
    return {
        "peers": {"results": {
            "pipedbn": {"ratio_to_gemm": 0.92},
            "minimal": {"pipedbn_speedup": 1.2},
            "sklearn": {"pipedbn_speedup": 0.8},  # a peer faster than pipedbn: must show
        }},
        "pipeline": {
            "pipeline": {**run, "stages": [stage(0.4, 9100), stage(0.96, 8900)]},
            "two_ranks": {**run, "training_s": 9.0, "stages": [stage(0.7, 9300),
                                                                stage(0.97, 9200)]},
            "in_process_1_thread": {**run, "training_s": 14.0},
            "greedy_in_process": {**run, "training_s": 16.0},
            "same_work_pipeline": {"samples_per_s": 8000.0},
            "same_work_gpipe": {"samples_per_s": 7000.0},
            "steady_ratio": 0.89, "steady_ratio_in_situ": 0.96, "two_ranks_ratio": 0.93,
        },
        "balancer": {
            "balanced": [{"ranks": 5, "samples_per_s": 9000.0, "ideal_samples_per_s": 10000.0}],
            "sync_variants": [{"ranks": 5, "sync": "ssp, staleness 2", "samples_per_s": 9500.0,
                               "ideal_samples_per_s": 10000.0}],
        },
        "quality": {"settings": {"seeds": [0]}, "time_to_target": {
            "probe_accuracy": {"streaming, 3 processes, seed 0": 2.0,
                               "greedy, 1 process, seed 0": 6.0},
            "recon_error": {"streaming, 3 processes, seed 0": 5.0,
                            "greedy, 1 process, seed 0": 2.0},
        }},
        "machine": {"cores": 2},
        "simulate": [{"case": "a", "ranks": 3, "ratio": 1.05},
                     {"case": "b", "ranks": 8, "ratio": 0.85}],
    }


def by_goal(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["goal"]: row for row in rows}


def test_every_goal_is_judged_against_its_target() -> None:
    g = by_goal(bench.goals(results()))
    assert g["CD-1 step / matrix-product rate, same shapes"]["met"]
    assert g["one layer: faster than a minimal PyTorch CD-1 loop"]["met"]
    assert not g["one layer: faster than scikit-learn BernoulliRBM"]["met"]
    assert g["bottleneck stage busy (3 ranks on 2 cores)"]["met"]
    assert not g["end-to-end / (batch / slowest standalone step), 3 ranks on 2 cores"]["met"]
    assert g["end-to-end / (batch / slowest standalone stage), 2 ranks, one per core"]["met"]
    assert g["faster than sequential greedy in one process (training time)"]["measured"] == 1.6
    assert g["balancer, 5 ranks: measured / ideal (work / ranks)"]["measured"] == 0.9
    assert g["balancer, 5 ranks, ssp, staleness 2: measured / ideal"]["met"]
    probe = "time to the same linear-probe accuracy: sequential greedy / streaming, seed 0"
    recon = ("time to the same layer-0 reconstruction error: sequential greedy / streaming, "
             "seed 0")
    assert g[probe]["measured"] == 3.0 and g[probe]["met"]
    assert g[recon]["measured"] == 0.4 and not g[recon]["met"]
    few = g["simulator: worst deviation from measured, 3 ranks or fewer"]
    assert few["measured"] == pytest.approx(0.05) and few["met"]  # lower is better
    every = g["simulator: worst deviation from measured, every case"]
    assert every["measured"] == pytest.approx(0.15) and not every["met"]


def test_goals_cover_only_the_sections_present() -> None:
    r = results()
    only = {"peers": r["peers"]}
    assert {row["how"] for row in bench.goals(only)} == {"peers"}
    assert bench.goals({}) == []


def test_the_table_marks_what_is_missed() -> None:
    text = bench.goals_table(bench.goals(results()))
    rows = text.splitlines()[2:]
    assert len(rows) == len(bench.goals(results()))
    missed = [line for line in rows if line.endswith("| **no** |")]
    assert any("scikit-learn" in line for line in missed)
    assert any("<= 0.1" in line for line in missed)


def test_from_json_renders_without_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    row = {"case": "quickstart", "ranks": 3, "plan": "0|1|2", "predicted": 1000.0,
           "measured": 950.0, "ratio": 1.0526, "other_cores": 0.0, "predicted_loaded": 1000.0,
           "ratio_loaded": 1.0526, "link": {"latency_s": 5e-5, "bandwidth_Bps": 5e9}}
    r = {"argv": [], "machine": {"cores": 2}, "simulate": [row]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(r))
    bench.main(["--from-json", str(path)])
    out = capsys.readouterr().out
    assert "| quickstart | 3 | `0\\|1\\|2` | - | 1,000 | 950 | 1.05 |" in out  # no all-reduce
    assert "| simulator: worst deviation from measured, every case | 0.053 | <= 0.1 | yes |" in out
