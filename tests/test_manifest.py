"""Data checked once per run: the manifest (``data.json``) that later processes and resumes
trust, its refusal of changed shards, the bounded evaluation sample, and reads that do not go
through the mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ONE_THREAD, ROOT, cli, env1

from pipedbn.config import load_config
from pipedbn.data.loader import open_data
from pipedbn.data.manifest import MANIFEST_FILE, manifest_bytes, read_manifest, trust, verify
from pipedbn.data.prepare import run_data
from pipedbn.errors import DataError

FEATURES = 6


def shards(folder: Path, n: int = 4, rows: int = 300) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for k in range(n):
        np.save(folder / f"part-{k}.npy", rng.random((rows, FEATURES)).astype(np.float32))
    return str(folder / "part-*.npy")


def cfg_for(glob: str, *overrides: str):
    return load_config(None, ["layers=[{hidden: 4}]", "data.source=npy", f"data.path={glob}",
                              "train.batch_size=10", *overrides])


def checked_run(tmp_path: Path, *overrides: str, rows: int = 300) -> tuple[Path, str]:
    """A run directory holding the manifest of a checked data set (what ``start_run`` writes)."""
    glob = shards(tmp_path / "data", rows=rows)
    data = run_data(cfg_for(glob, *overrides), None, values=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_FILE).write_bytes(manifest_bytes(data))
    return run, glob


def test_manifest_is_trusted_without_reading_values(tmp_path):
    how = ("data.standardize=true", "layers.0.kind=gaussian")
    run, glob = checked_run(tmp_path, *how, rows=10_000)  # 240 KB shards
    full = open_data(cfg_for(glob, *how), unit_range=False)
    trusted = run_data(cfg_for(glob, *how), run, values=True)
    assert trusted.checked
    for a, b in ((trusted.mean, full.mean), (trusted.std, full.std),
                 (trusted.feature_mean, full.feature_mean)):
        assert a is not None and b is not None
        np.testing.assert_array_equal(a, b)  # bit for bit: the weights start from them
    # proof that no value was read: a bad value in the middle of a shard, its size, time and
    # first and last 64 KiB kept, is not seen by the trusting open (the values were checked
    # once, by the run's first process; micro-batches are checked again as they are read)
    path = tmp_path / "data" / "part-3.npy"
    st = path.stat()
    writer = np.load(path, mmap_mode="r+")
    writer[5000, 2] = np.nan
    writer.flush()
    del writer
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_data(cfg_for(glob, *how), run, values=True).checked


def test_headers_only_open_reads_no_value(tmp_path):
    glob = shards(tmp_path / "data")
    np.save(tmp_path / "data" / "part-3.npy", np.full((300, FEATURES), np.nan, np.float32))
    data = run_data(cfg_for(glob), None, values=False)  # would raise if it read a value
    assert not data.checked and data.features == FEATURES
    with pytest.raises(DataError, match="part-3.npy sample 0"):
        run_data(cfg_for(glob), None, values=True)


@pytest.mark.parametrize("change", ["size", "mtime", "contents", "gone"])
def test_changed_shard_is_refused_naming_it(tmp_path, change):
    run, glob = checked_run(tmp_path)
    path = tmp_path / "data" / "part-2.npy"
    st = path.stat()
    if change == "size":
        np.save(path, np.zeros((301, FEATURES), np.float32))
    elif change == "mtime":
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "contents":  # same size and time, a different first block
        x = np.load(path)
        x[0, 0] = 0.123
        np.save(path, x)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        path.unlink()
    with pytest.raises(DataError) as e:
        run_data(cfg_for(glob), run, values=True)
    msg = str(e.value)
    if change == "gone":
        assert "is not what the run" in msg
    else:
        assert f"{path} changed since the run in {run} checked it" in msg
        assert {"size": "its size differs", "mtime": "its modification time differs",
                "contents": "its first or last 64 KiB differ"}[change] in msg


def test_unreadable_manifest_is_one_error(tmp_path):
    run, glob = checked_run(tmp_path)
    (run / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(DataError, match="data.json: unreadable"):
        read_manifest(run)
    (run / MANIFEST_FILE).write_text(json.dumps({"version": 99}))
    with pytest.raises(DataError, match="not a data manifest"):
        read_manifest(run)


def test_manifest_round_trip(tmp_path):
    run, glob = checked_run(tmp_path)
    record = read_manifest(run)
    assert record is not None and len(record["files"]) == 4
    assert all(set(f) == {"path", "size", "mtime_ns", "digest"} for f in record["files"])
    data = open_data(cfg_for(glob), unit_range=False, values=False)
    verify(record, data, run)
    trust(record, data)
    assert data.checked


# ------------------------------------------------------------------- the statistics' sample


def test_stats_sample_is_whole_when_small_and_bounded_seeded_when_large(tmp_path):
    glob = shards(tmp_path / "data", n=4, rows=500)  # 2,000 rows, 1,800 trained on
    cfg = cfg_for(glob)
    whole = run_data(cfg, None, values=True)
    x = np.concatenate([np.load(tmp_path / "data" / f"part-{k}.npy") for k in range(4)])
    exact = np.add.reduce(x[whole.train_rows], axis=0, dtype=np.float64) / len(whole.train_rows)
    np.testing.assert_array_equal(whole.feature_mean, exact.astype(np.float32))
    bounded = run_data(cfg_for(glob, "data.stats_samples=300"), None, values=True)
    rows = bounded.subset(bounded.train_rows, 300, 0x57A7)
    assert len(rows) == 300 and set(rows) <= set(bounded.train_rows)
    sampled = np.add.reduce(x[rows], axis=0, dtype=np.float64) / 300
    np.testing.assert_array_equal(bounded.feature_mean, sampled.astype(np.float32))
    again = run_data(cfg_for(glob, "data.stats_samples=300"), None, values=True)
    np.testing.assert_array_equal(again.feature_mean, bounded.feature_mean)  # seeded
    other = run_data(cfg_for(glob, "data.stats_samples=300", "seed=1"), None, values=True)
    assert not np.array_equal(other.feature_mean, bounded.feature_mean)


def test_a_bad_value_outside_the_stats_sample_is_left_to_the_stream(tmp_path):
    glob = shards(tmp_path / "data", n=4, rows=500)
    cfg = cfg_for(glob, "data.stats_samples=300")
    data = run_data(cfg, None, values=False)
    rows = set(data.subset(data.train_rows, 300, 0x57A7).tolist())
    row = next(r for r in data.train_rows.tolist() if r >= 1500 and r not in rows)
    x = np.load(tmp_path / "data" / "part-3.npy")
    x[row - 1500, 1] = np.inf
    np.save(tmp_path / "data" / "part-3.npy", x)
    assert run_data(cfg, None, values=True).checked  # start-up did not read it
    with pytest.raises(DataError, match=f"part-3.npy sample {row - 1500}"):
        data.rows(np.array([row]))  # as its micro-batch is read


# --------------------------------------------------------------------- the evaluation sample


def test_eval_sample_is_bounded_and_seeded(tmp_path):
    glob = shards(tmp_path / "data", n=4, rows=500)  # 2,000 rows, 200 held out
    data = open_data(cfg_for(glob), unit_range=False, values=False)
    held, ref = data.eval_rows(50)
    assert len(held) == 50 and len(ref) == 50
    assert set(held) <= set(data.held_rows) and set(ref) <= set(data.train_rows)
    again = open_data(cfg_for(glob), unit_range=False, values=False).eval_rows(50)
    np.testing.assert_array_equal(held, again[0])  # same seed, same rows
    np.testing.assert_array_equal(ref, again[1])
    other = open_data(cfg_for(glob, "seed=1"), unit_range=False, values=False)
    assert not np.array_equal(other.eval_rows(50)[0], held)
    whole, _ = data.eval_rows(10_000)  # no larger than the bound: the whole split, as before
    np.testing.assert_array_equal(whole, data.monitor_rows)
    nothing_held = open_data(cfg_for(glob, "data.held_out=0"), unit_range=False, values=False)
    assert len(nothing_held.eval_rows(50)[0]) == 50
    assert len(nothing_held.eval_rows(10_000)[0]) == 1000  # as before: 1,000 training rows


def test_final_samples_default_keeps_small_sets_whole():
    cfg = load_config(None, ["layers=[4]"])
    assert cfg.monitor.final_samples >= 500  # quickstart's 500 held-out images, evaluated whole


# -------------------------------------------------------------------------------- reading


def test_take_reads_rows_without_the_mapping(tmp_path):
    glob = shards(tmp_path / "data", n=1, rows=300)
    data = open_data(cfg_for(glob), unit_range=False, values=False)
    shard = data.source.shards[0]
    rows = np.array([0, 1, 2, 7, 7, 100, 299])
    got = shard.take(rows)
    np.testing.assert_array_equal(got, np.load(tmp_path / "data" / "part-0.npy")[rows])
    assert shard._array is None  # never mapped


def test_take_refuses_a_file_truncated_under_it(tmp_path):
    glob = shards(tmp_path / "data", n=1, rows=300)
    data = open_data(cfg_for(glob), unit_range=False, values=False)
    path = tmp_path / "data" / "part-0.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(DataError, match="shorter than its header says"):
        data.source.shards[0].take(np.array([299]))


# ---------------------------------------------------------------------------- end to end


def _bad_late_shard(folder: Path) -> str:
    """Six 64-feature shards in [0, 1] (configs/tiny.yaml's width); a NaN deep in the last."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        x = rng.random((2000, 64)).astype(np.float32)
        if k == 5:
            x[1765, 9] = np.nan
        np.save(folder / f"part-{k}.npy", x)
    return str(folder / "part-*.npy")


@pytest.mark.slow
@pytest.mark.parametrize("nproc", ["1", "3"])
def test_bad_value_deep_in_a_late_shard(tmp_path, nproc, warm):
    # checked in the process the user started, before any worker: the warm interpreter's
    # child (conftest.warm) is that process, without importing torch again
    glob = _bad_late_shard(tmp_path / "data")
    run = tmp_path / "run"
    proc = warm.cli("train", "configs/tiny.yaml", ONE_THREAD, "data.source=npy",
                    f"data.path={glob}", f"run.dir={run}", "--nproc", nproc)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pipedbn: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "non-finite value (NaN or Inf) in part-5.npy sample 1765" in proc.stderr
    assert not run.exists()  # nothing written: checked before the run directory is claimed
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("change", ["size", "mtime"])
def test_resume_on_changed_shards_is_refused(tmp_path, change, warm):
    # one process each (a run in it, a resume refused before any worker starts): the warm
    # interpreter's children (conftest.warm)
    cli = warm.cli
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(folder / f"part-{k}.npy", rng.random((400, 64)).astype(np.float32))
    run = tmp_path / "run"
    proc = cli("train", "configs/tiny.yaml", ONE_THREAD, "data.source=npy",
               f"data.path={folder}/part-*.npy", f"run.dir={run}", "--nproc", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / MANIFEST_FILE).read_text())
    assert [Path(f["path"]).name for f in record["files"]] == [f"part-{k}.npy" for k in range(3)]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    path = folder / "part-1.npy"
    if change == "size":
        np.save(path, rng.random((401, 64)).astype(np.float32))
    else:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    proc = cli("train", str(run / "config.yaml"), ONE_THREAD, "--resume", str(run),
               "--nproc", "2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pipedbn: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert f"{path} changed since the run" in proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # refused before anything of the run was touched


def _bad_stream(folder: Path) -> str:
    """Four 64-feature shards of 400 rows; a NaN in the last, outside the statistics' sample
    of ``data.stats_samples=100`` (so the stream meets it, not the start-up check)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        x = rng.random((400, 64)).astype(np.float32)
        if k == 3:
            x[321, 9] = np.nan
        np.save(folder / f"part-{k}.npy", x)
    glob = str(folder / "part-*.npy")
    cfg = load_config("configs/tiny.yaml", ["data.source=npy", f"data.path={glob}",
                                            *STREAM])
    data = run_data(cfg, None, values=False)
    assert 1200 + 321 in set(data.train_rows.tolist())
    assert 1200 + 321 not in set(data.subset(data.train_rows, 100, 0x57A7).tolist())
    return glob


STREAM = ["data.stats_samples=100", "rbm.epochs=1", "monitor.enabled=false"]


def _stopped_cleanly(run: Path) -> None:
    """What a run stopped by bad data in the stream leaves: marked failed, naming the sample;
    no final state, no model, no half-written file."""
    failure = json.loads((run / "failure.json").read_text())
    assert failure["exit_code"] == 2 and "part-3.npy sample 321" in failure["message"]
    assert not (run / "model.safetensors").exists() and not (run / "summary.txt").exists()
    assert not (run / "checkpoints" / "final").exists()
    assert not list(run.parent.rglob("*.tmp")) and not list(run.parent.glob(".*claim*"))


@pytest.mark.slow
@pytest.mark.parametrize("nproc", ["1", "3"])
def test_bad_value_met_in_the_stream_is_one_line(tmp_path, nproc, warm):
    glob = _bad_stream(tmp_path / "data")
    run = tmp_path / "run"
    # --nproc 1 trains in the process the user started: the warm interpreter's child
    # (conftest.warm); --nproc 3 starts its workers as a real launch does
    run_cli = warm.cli if nproc == "1" else cli
    proc = run_cli("train", "configs/tiny.yaml", ONE_THREAD, "data.source=npy",
                   f"data.path={glob}", f"run.dir={run}", "--nproc", nproc, "-q", *STREAM)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pipedbn: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "non-finite value (NaN or Inf) in part-3.npy sample 321" in proc.stderr
    _stopped_cleanly(run)


@pytest.mark.slow
def test_bad_value_met_in_the_stream_under_torchrun_is_one_line(tmp_path):
    glob = _bad_stream(tmp_path / "data")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
         "-m", "pipedbn", "train", "configs/tiny.yaml", "data.source=npy", f"data.path={glob}",
         f"run.dir={run}", "-q", *STREAM],
        cwd=ROOT, env=env1(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pipedbn: ")]
    assert ours == ["pipedbn: error: stage 0: data: non-finite value (NaN or Inf) in "
                    "part-3.npy sample 321; clean the data or drop those samples"], proc.stderr
    _stopped_cleanly(run)
