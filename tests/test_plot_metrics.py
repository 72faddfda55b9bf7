"""tools/plot_metrics.py: the PNGs of a real run, the timeline's intervals, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools import plot_metrics as pm

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.plot_metrics", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    import matplotlib.image

    height, width, channels = matplotlib.image.imread(path).shape
    assert height > 200 and width > 400 and channels in (3, 4)


def rec(tag: str, step: int, rank: int, wall_time: float, value: float = 0.0,
        layer: int | None = None) -> dict[str, Any]:
    return {"step": step, "stage": rank, "layer": rank if layer is None else layer, "tag": tag,
            "value": value, "wall_time": wall_time}


def group(rank: int, step: int, end: float, compute: float, recv: float, send: float,
          wall: float | None) -> list[dict[str, Any]]:
    """One pipeline record group, as the runner writes it (wall_times a few us apart)."""
    values = {"compute_s": compute, "recv_wait_s": recv, "send_wait_s": send, "wall_s": wall}
    return [rec(f"pipeline/{k}", step, rank, end + i * 1e-5, v)
            for i, (k, v) in enumerate(values.items()) if v is not None]


def test_writes_both_pngs_of_a_real_run(tiny_run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert pm.main([str(tiny_run), "-o", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "curves.png"), str(tmp_path / "timeline.png")]
    for path in written:
        assert_png(Path(path))


def test_timeline_has_one_row_per_rank(tiny_run: Path) -> None:
    records = pm.load(tiny_run / "metrics.jsonl")
    ranks = {r["stage"] for r in records if r["tag"].startswith("pipeline/")}
    assert len(ranks) == 3  # configs/tiny.yaml: one rank per layer
    assert set(pm.intervals(records)) == ranks
    assert set(pm.rank_layers(records)) == ranks


def test_intervals_of_a_real_run_never_overlap_and_add_up(tiny_run: Path) -> None:
    records = pm.load(tiny_run / "metrics.jsonl")
    span = max(r["wall_time"] for r in records) - min(r["wall_time"] for r in records)
    for rank, spans in pm.intervals(records).items():
        assert spans, rank
        previous_end = 0.0
        for iv in spans:
            assert all(piece >= 0 for piece in iv), (rank, iv)
            assert iv.start >= previous_end, f"rank {rank}: {iv} overlaps the previous interval"
            assert iv.end - iv.start == pytest.approx(sum(iv[1:]), abs=1e-12)
            assert iv.end <= span + 1e-9
            previous_end = iv.end


def test_intervals_clip_overlaps_and_scale_oversized_pieces() -> None:
    records = [rec("rbm/recon_error", 0, 0, 100.0),  # the run starts at 100 s
               *group(0, 9, 101.0, 0.2, 0.1, 0.1, 0.5),
               # reports 0.6 s of wall time but starts 0.1 s before the previous one ended
               *group(0, 19, 101.5, 0.3, 0.2, 0.0, 0.6),
               # busier than its wall time: the pieces shrink to fit, nothing left for "other"
               *group(1, 9, 101.2, 0.4, 0.4, 0.0, 0.4)]
    got = pm.intervals(records)
    assert got[0][0] == pytest.approx((0.5, 0.2, 0.1, 0.1, 0.1))
    assert got[0][1].start == pytest.approx(got[0][0].end)
    assert got[0][1] == pytest.approx((1.0, 0.3, 0.2, 0.0, 0.0))
    assert got[1] == [pytest.approx((0.8, 0.2, 0.2, 0.0, 0.0))]
    assert pm.rank_layers(records) == {0: [0], 1: [1]}


def test_intervals_without_wall_s_start_where_the_previous_one_ended() -> None:
    records = [*group(0, 9, 10.0, 0.1, 0.0, 0.0, None),  # the first one has no start: skipped
               *group(0, 19, 10.5, 0.1, 0.2, 0.1, None)]
    start, compute, recv, send, other = pm.intervals(records)[0][0]
    assert len(pm.intervals(records)[0]) == 1
    assert (start, compute, recv, send, other) == pytest.approx((0.0, 0.1, 0.2, 0.1, 0.1))


def test_replans_are_plan_events_after_the_first() -> None:
    def plan(at: int, wall_time: float) -> dict[str, Any]:
        return {"step": at, "stage": 0, "layer": 0, "tag": "balancer/plan", "wall_time": wall_time,
                "data": {"at": at, "plan": "...", "spec": "0|1"}}

    assert pm.replans([plan(0, 1.0), plan(140, 5.0), rec("rbm/lr", 140, 0, 5.0)]) == [(140, 5.0)]


def test_a_run_without_pipeline_records_still_gets_both_pngs(tiny_run: Path,
                                                             tmp_path: Path) -> None:
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if '"pipeline/' not in line]
    assert len(kept) < len(lines)
    (tmp_path / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    proc = run_script(str(tmp_path))  # default output directory: RUN_DIR/plots
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "plots" / name)
                                   for name in ("curves.png", "timeline.png")]
    assert pm.intervals(pm.load(tmp_path / "metrics.jsonl")) == {}
    for name in ("curves.png", "timeline.png"):
        assert_png(tmp_path / "plots" / name)


GOOD = json.dumps(rec("rbm/lr", 0, 0, 1.0))


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no such directory"),
    ("", "metrics.jsonl: no such file"),
    (f"{GOOD}\n{GOOD}\n{{\"step\": 3, \"sta\n", "metrics.jsonl:3: not JSON"),
    (f"{GOOD}\n[1, 2]\n", "metrics.jsonl:2: not a metrics record"),
    (f"{GOOD}\n" + json.dumps({"step": 1, "stage": 0, "layer": 0, "tag": "rbm/lr"}) + "\n",
     "metrics.jsonl:2: not a metrics record (missing or mistyped: wall_time)"),
    ("\n", "metrics.jsonl: no records"),
], ids=["no-dir", "no-metrics", "bad-json", "not-an-object", "missing-key", "empty"])
@pytest.mark.slow
def test_bad_input_exits_2_with_one_clear_message(tmp_path: Path, content: str | None,
                                                  expected: str) -> None:
    run_dir = tmp_path / "run"
    if content is not None:
        run_dir.mkdir()
        if content:
            (run_dir / "metrics.jsonl").write_text(content)
    proc = run_script(str(run_dir))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr and str(run_dir) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""
