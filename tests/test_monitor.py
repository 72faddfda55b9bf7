"""Monitoring end to end: TensorBoard event files per stage, metrics.jsonl agreeing with them, a
real TensorBoard server over a finished run, the progress lines, and no effect on the weights."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cli, env1
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STAGE_TAGS = {"rbm/recon_error", "rbm/free_energy_gap", "rbm/pseudo_log_likelihood",
              "rbm/weight_norm", "rbm/hidden_mean", "rbm/lr", "pipeline/compute_s",
              "pipeline/recv_wait_s", "pipeline/send_wait_s", "pipeline/busy_frac",
              "throughput/samples_per_s"}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """configs/tiny.yaml on three local processes, progress as log lines."""
    run_dir = tmp_path_factory.mktemp("monitor") / "run"
    proc = cli("train", "configs/tiny.yaml", f"run.dir={run_dir}", "monitor.progress=log",
               "monitor.log_seconds=0.01")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc.stderr


def events(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                   "tensors": 0})
    ea.Reload()
    return ea


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_stage_writes_the_same_tags_images_histograms_plan_and_hparams(
        logged: tuple[Path, str]) -> None:
    run_dir, _ = logged
    runs = sorted(p.name for p in (run_dir / "tb").iterdir())
    assert runs == ["layer-0", "layer-1", "layer-2", "run"]
    starts = {0: 0, 1: 16, 2: 32}  # tiny.yaml: 33 micro-batches per epoch, offset 0.5 epochs
    for layer, start in starts.items():
        ea = events(run_dir / "tb" / f"layer-{layer}")
        tags = ea.Tags()
        assert set(tags["scalars"]) >= STAGE_TAGS, STAGE_TAGS - set(tags["scalars"])
        for tag in STAGE_TAGS:
            steps = [e.step for e in ea.Scalars(tag)]
            assert steps == sorted(steps) and len(steps) >= 2, (layer, tag, steps)
            assert start <= steps[0] and steps[-1] <= 98, (layer, tag, steps)
        assert [e.step for e in ea.Scalars("rbm/recon_error")][:2] == [start, start + 10]
        assert {"weights/weight", "weights/hidden_bias"} <= set(tags["histograms"])
        assert [e.step for e in ea.Scalars("eval/recon_error")] == [0, 98]
        assert ea.PluginTagToContent("hparams"), "no HParams row"
    images = events(run_dir / "tb" / "layer-0").Tags()["images"]
    assert {"images/filters", "images/reconstructions", "images/samples",
            "images/dbn_samples"} <= set(images)
    ea = events(run_dir / "tb" / "layer-0")
    img = ea.Images("images/filters")[-1]
    assert img.encoded_image_string.startswith(b"\x89PNG") and img.width == 8 * 9 + 1
    text = events(run_dir / "tb" / "run").Tags()["tensors"]
    assert {"balancer/plan/text_summary", "config/text_summary"} <= set(text)


def test_metrics_jsonl_agrees_with_the_event_files(logged: tuple[Path, str]) -> None:
    run_dir, _ = logged
    jsonl: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for r in records(run_dir):
        if "value" in r and math.isfinite(r["value"]):
            jsonl.setdefault((r["layer"], r["tag"]), []).append((r["step"], r["value"]))
    compared = 0
    for layer in range(3):
        ea = events(run_dir / "tb" / f"layer-{layer}")
        tb_tags = set(ea.Tags()["scalars"])
        assert tb_tags == {tag for (i, tag) in jsonl if i == layer}
        for tag in tb_tags:
            tb = sorted((e.step, e.value) for e in ea.Scalars(tag))
            js = sorted(jsonl[(layer, tag)])
            assert [s for s, _ in tb] == [s for s, _ in js], (layer, tag)
            for (_, a), (_, b) in zip(tb, js, strict=True):
                assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (layer, tag)  # float32 there
            compared += len(tb)
    assert compared > 300
    # run-level scalars: the end-to-end rate
    ea = events(run_dir / "tb" / "run")
    [(step, value)] = jsonl[(-1, "throughput/end_to_end_samples_per_s")]
    assert [(e.step, e.value) for e in ea.Scalars("throughput/end_to_end_samples_per_s")] == \
        [(step, pytest.approx(value, rel=1e-6))]


@pytest.mark.slow
def test_tensorboard_server_serves_the_run(logged: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, _ = logged
    err = tmp_path / "tb.err"
    with err.open("w") as f:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir / "tb"),
             "--host", "127.0.0.1", "--port", "0", "--load_fast", "false"],
            stdout=subprocess.DEVNULL, stderr=f, env=env1())
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None and time.monotonic() < deadline:
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", err.read_text())
            url = m.group(1) if m else None
            assert server.poll() is None, err.read_text()
            time.sleep(0.2)
        assert url, err.read_text()

        def get(path: str) -> object:
            with urllib.request.urlopen(url + path, timeout=10) as r:
                return json.loads(r.read())

        runs: object = []
        while time.monotonic() < deadline:
            runs = get("/data/runs")
            tags = get("/data/plugin/scalars/tags")
            assert isinstance(tags, dict)
            if set(tags) >= {"layer-0", "layer-1", "layer-2"} and all(
                    set(tags[f"layer-{i}"]) >= STAGE_TAGS for i in range(3)):
                break
            time.sleep(0.5)
        assert set(runs) >= {"layer-0", "layer-1", "layer-2", "run"}, runs  # type: ignore[arg-type]
        assert all(set(tags[f"layer-{i}"]) >= STAGE_TAGS for i in range(3)), tags
        points = get("/data/plugin/scalars/scalars?run=layer-1&tag=rbm/recon_error")
        steps = [p[1] for p in points]  # type: ignore[union-attr,index]
        expected = sorted(r["step"] for r in records(run_dir)
                          if r["tag"] == "rbm/recon_error" and r["layer"] == 1)
        assert steps == expected
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)


def test_progress_lines_carry_rank_stage_rate_epoch_and_bottleneck(
        logged: tuple[Path, str]) -> None:
    _, stderr = logged
    lines = [ln for ln in stderr.splitlines() if "micro-batch" in ln and "samples/s" in ln]
    assert lines, stderr
    pattern = (r"^\[pipedbn rank 0 stage 0\] micro-batch (\d+)/98, [\d,]+ samples/s, "
               r"layer epochs \d\.\d/2 \d\.\d/2 \d\.\d/2, "
               r"bottleneck (stage \d \(layer \d, busy \d+%\)|-)$")
    for line in lines:
        assert re.match(pattern, line), line
    assert lines[-1].startswith("[pipedbn rank 0 stage 0] micro-batch 98/98")
    assert "layer epochs 2.0/2 2.0/2 2.0/2" in lines[-1]  # each layer's own 2, not the stream's
    assert any("bottleneck stage" in ln for ln in lines)


@pytest.mark.slow
def test_monitoring_changes_no_weight_and_can_be_switched_off(logged: tuple[Path, str],
                                                              tmp_path: Path) -> None:
    run_dir, _ = logged
    off = tmp_path / "off"
    proc = cli("train", "configs/tiny.yaml", f"run.dir={off}", "monitor.enabled=false")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(run_dir / "model.safetensors"), load_file(off / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not (off / "tb").exists()
    tags = {r["tag"] for r in records(off)}
    # the end evaluation's warnings (a useless layer) are part of it
    assert tags and all(t.startswith(("eval/", "throughput/", "balancer/", "config",
                                      "warnings/")) for t in tags), tags
    assert "bottleneck" not in proc.stderr  # no progress lines


@pytest.mark.slow
def test_replicas_get_runs_of_their_own_and_probes_in_pieces_change_nothing(tmp_path: Path
                                                                           ) -> None:
    # batch 20, probe 50: each probe crosses the replicated links in three pieces
    run_dir, off = tmp_path / "run", tmp_path / "off"
    common = ["balancer.plan=0|1x2|2", "--nproc", "4", "train.batch_size=20"]
    proc = cli("train", "configs/tiny.yaml", f"run.dir={run_dir}", *common,
               "monitor.eval_samples=50", "monitor.progress=off")
    assert proc.returncode == 0, proc.stderr
    proc = cli("train", "configs/tiny.yaml", f"run.dir={off}", *common, "monitor.enabled=false")
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(run_dir / "model.safetensors"), load_file(off / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    probes = [r for r in records(run_dir) if r["tag"] == "rbm/free_energy_gap"]
    assert {r["layer"] for r in probes} == {0, 1, 2}
    names = sorted(p.name for p in (run_dir / "tb").iterdir())
    assert names == ["layer-0", "layer-1", "layer-1-replica-1", "layer-2", "run"]
    for name in ("layer-1", "layer-1-replica-1"):
        tags = set(events(run_dir / "tb" / name).Tags()["scalars"])
        assert {"rbm/recon_error", "pipeline/busy_frac", "rbm/weight_norm"} <= tags, (name, tags)
