"""tools/bench_peers.py and tools/bench_quality.py: tiny timings, the time-to-quality logic on
synthetic curves, and the checkpoint wall time it relies on (no timed assertions)."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pipedbn.run.checkpoint import part_path, save_part
from tools import bench_peers, bench_quality

ROOT = Path(__file__).resolve().parents[1]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.slow
def test_peers_tiny_run_rates_and_report(tmp_path: Path) -> None:
    result = bench_peers.run(rounds=2, steps=2, warmup=1)
    expected = ["gemm", "pipedbn", "minimal"]
    expected += ["sklearn"] if _installed("sklearn") else []
    expected += ["learnergy", "learnergy_core"] if _installed("learnergy") else []
    assert set(result["results"]) == set(expected)
    for name in expected:
        row = result["results"][name]
        assert row["samples_per_s"] > 0 and row["step_ms"] > 0, name
    assert result["results"]["pipedbn"]["pipedbn_speedup"] == pytest.approx(1.0)
    assert result["machine"]["torch_threads"] == 1
    text = bench_peers.report(result)
    for name in result["order"]:
        assert bench_peers.LABELS[name] in text, name
    png = bench_peers.plot(result, tmp_path / "peers.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(result)  # JSON-ready


@pytest.mark.slow
def test_peers_missing_peer_gets_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any) -> Any:
        raise ImportError("no learnergy")

    monkeypatch.setattr(bench_peers, "_learnergy", missing)
    result = bench_peers.run(rounds=1, steps=1, warmup=0, only=["learnergy"])
    assert set(result["results"]) == {"gemm", "pipedbn"}
    assert result["missing"] == {"learnergy": bench_peers.INSTALL_HINT}
    row = next(line for line in bench_peers.report(result).splitlines()
               if line.startswith(f"| {bench_peers.LABELS['learnergy']} |"))
    assert bench_peers.INSTALL_HINT in row


def test_first_reaching_and_target() -> None:
    fr = bench_quality.first_reaching
    assert fr([1, 2, 3, 4], [0.5, 0.9, 0.85, 0.95], 0.9, True) == 2  # the first crossing
    assert fr([1, 2, 3], [0.5, 0.6, 0.7], 0.9, True) is None
    assert fr([3, 1, 2], [0.95, 0.1, 0.92], 0.9, True) == 2  # in time order
    assert fr([1, 2, 3], [50.0, 10.0, 12.0], 10.0, False) == 2  # lower is better, at target
    assert bench_quality.common_target([0.91, 0.93, 0.92], True) == 0.91
    assert bench_quality.common_target([4.1, 3.9], False) == 4.1
    target, times = bench_quality.time_to_quality(
        {"fast": ([1.0, 2.0, 3.0], [0.80, 0.93, 0.94]),
         "slow": ([2.0, 4.0, 6.0], [0.70, 0.85, 0.92])}, True)
    assert target == 0.92 and times == {"fast": 2.0, "slow": 6.0}


def test_equal_updates_against_seed_noise() -> None:
    cmp = bench_quality.equal_updates({"streaming": {0: 0.95, 1: 0.94},
                                       "greedy": {0: 0.93, 1: 0.945}})
    assert cmp["differences"] == pytest.approx([0.02, -0.005])
    assert cmp["mean_difference"] == pytest.approx(0.0075)
    assert cmp["seed_noise"] == pytest.approx(0.015) and cmp["within_noise"] is True
    one = bench_quality.equal_updates({"streaming": {0: 0.95}, "greedy": {0: 0.90}})
    assert one["seed_noise"] is None and one["within_noise"] is None


def _synthetic_run(schedule: str, nproc: int, seed: int, speed: float) -> dict[str, Any]:
    cks = [{"tag": f"step-{c}", "micro_batch": c, "t": c / speed, "sha256": [schedule, str(c)],
            "probe_accuracy": 0.9 + 0.01 * c, "recon_error": 10.0 - c,
            "pseudo_log_likelihood": -100.0 + c} for c in (1, 2, 3)]
    cks[-1]["tag"] = "final"
    cks[-1]["log_likelihood"] = -90.0 - seed
    name = f"{schedule}, {nproc} process{'es' if nproc > 1 else ''}"
    return {"name": name, "schedule": schedule, "nproc": nproc, "seed": seed, "startup_s": 1.0,
            "checkpoints": cks}


def test_summary_report_and_plot(tmp_path: Path) -> None:
    runs = [_synthetic_run("streaming", 3, 0, 2.0), _synthetic_run("greedy", 3, 0, 1.0),
            _synthetic_run("greedy", 1, 0, 1.0)]
    runs[0]["checkpoints"][-1]["probe_accuracy"] = 0.92  # streaming ends lower: the target
    result: dict[str, Any] = {
        "date": "2026-01-01", "runs": runs,
        "settings": {"epochs": 1, "seeds": [0], "every": {"streaming": 1, "greedy": 1},
                     "stream_length": {"streaming": 3, "greedy": 3}},
        **bench_quality.summarize(runs),
    }
    assert result["targets"] == {"probe_accuracy": {"0": 0.92}, "recon_error": {"0": 7.0}}
    times = result["time_to_target"]
    assert times["probe_accuracy"] == {"streaming, 3 processes, seed 0": 1.0,
                                       "greedy, 3 processes, seed 0": 2.0,
                                       "greedy, 1 process, seed 0": 2.0}
    assert result["greedy_1p_equals_3p"] is True
    assert result["layer0_same_in_both_schedules"] is False  # the synthetic checksums differ
    assert result["equal_updates"]["probe_accuracy"]["mean_difference"] == pytest.approx(-0.01)
    text = bench_quality.report(result)
    assert "greedy, 1 process" in text and "identical" in text
    assert bench_quality.plot(result, tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_part_records_its_wall_time(tmp_path: Path) -> None:
    before = time.time()
    save_part(tmp_path, "step-5", 5, 0, {"weight": torch.zeros(2, 2)}, "digest")
    meta = json.loads(part_path(tmp_path, "step-5", 0).with_suffix(".json").read_text())
    assert before <= meta["wall_time"] <= time.time()
