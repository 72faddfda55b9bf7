"""open_data: split, preprocessing, checks, statistics, micro-batches; and the Prefetcher."""

from __future__ import annotations

import gzip
import itertools
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipedbn.config import load_config
from pipedbn.data.loader import Data, Prefetcher, open_data
from pipedbn.errors import DataError


def cfg_for(*overrides: str, seed: int = 0):
    return load_config(None, ["layers=[{hidden: 8}]", f"seed={seed}", *overrides])


def save(tmp_path: Path, x: np.ndarray, name: str = "x.npy") -> str:
    path = tmp_path / name
    np.save(path, x)
    return str(path)


def npy_data(tmp_path: Path, x: np.ndarray, *overrides: str, unit_range: bool = False,
             seed: int = 0, name: str = "x.npy") -> Data:
    path = save(tmp_path, x, name)
    return open_data(cfg_for("data.source=npy", f"data.path={path}", *overrides, seed=seed),
                     unit_range)


def numbered(n: int, features: int = 3) -> np.ndarray:
    """Row i holds i in feature 0, so a batch tells which rows it is made of."""
    x = np.random.default_rng(n).random((n, features)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x


def epoch_rows(data: Data, epoch: int) -> list[np.ndarray]:
    return [data.batch_rows(epoch, j) for j in range(data.batches_per_epoch)]


# ---------------------------------------------------------------------------------- the split


@pytest.mark.parametrize(("n", "held_out", "n_held"), [(50, 0.2, 10), (41, 0.1, 4), (7, 0.0, 0),
                                                       (3, 0.5, 2)])
def test_split_sizes_disjoint_and_complete(tmp_path, n, held_out, n_held):
    data = npy_data(tmp_path, numbered(n), f"data.held_out={held_out}", "train.batch_size=4")
    assert len(data.held_rows) == n_held and len(data.train_rows) == n - n_held
    assert np.intersect1d(data.train_rows, data.held_rows).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([data.train_rows, data.held_rows])),
                                  np.arange(n))
    assert (np.diff(data.train_rows) > 0).all() and (np.diff(data.held_rows) > 0).all()
    held = data.held_out()
    assert held.shape == (n_held, 3)
    np.testing.assert_array_equal(held[:, 0], data.held_rows)


def test_split_deterministic_per_seed(tmp_path):
    x = numbered(200)
    a = npy_data(tmp_path, x, "data.held_out=0.25", seed=4)
    b = npy_data(tmp_path, x, "data.held_out=0.25", seed=4)
    c = npy_data(tmp_path, x, "data.held_out=0.25", seed=5)
    np.testing.assert_array_equal(a.held_rows, b.held_rows)
    np.testing.assert_array_equal(a.train_rows, b.train_rows)
    assert not np.array_equal(a.held_rows, c.held_rows)
    assert not np.array_equal(a.held_rows, np.arange(50))  # drawn at random, not the first rows


def test_no_training_samples_left(tmp_path):
    with pytest.raises(DataError, match="leave none for training"):
        npy_data(tmp_path, numbered(1), "data.held_out=0.6")


def test_empty_data(tmp_path):
    with pytest.raises(DataError, match="holds no samples"):
        npy_data(tmp_path, np.zeros((0, 3), np.float32))


def test_limit_uses_first_rows(tmp_path):
    x = numbered(100)
    data = npy_data(tmp_path, x, "data.limit=30", "data.held_out=0.1", "train.batch_size=7")
    assert len(data.train_rows) == 27 and len(data.held_rows) == 3
    assert set(data.train_rows.tolist()) | set(data.held_rows.tolist()) == set(range(30))
    seen = np.concatenate([data.micro_batch(0, j)[:, 0] for j in range(data.batches_per_epoch)])
    assert sorted(seen.tolist()) == data.train_rows.tolist()
    big = npy_data(tmp_path, x, "data.limit=1000", name="y.npy")
    assert len(big.train_rows) + len(big.held_rows) == 100


def test_yaml_config_file(tmp_path):
    x = numbered(20)
    path = save(tmp_path, x)
    (tmp_path / "cfg.yaml").write_text(
        "seed: 3\nlayers: [{hidden: 8}]\n"
        f"data: {{source: npy, path: [{path}], held_out: 0.25, shuffle: false}}\n"
        "train: {batch_size: 4}\n"
    )
    data = open_data(load_config(tmp_path / "cfg.yaml"), unit_range=False)
    assert len(data.held_rows) == 5 and data.batches_per_epoch == 4 and data.seed == 3
    np.testing.assert_array_equal(data.micro_batch(0, 0), x[data.train_rows[:4]])


# ----------------------------------------------------------------------------- micro-batches


def test_epoch_order_deterministic_and_varies(tmp_path):
    x = numbered(90)
    over = ("data.held_out=0.1", "train.batch_size=10")
    a = npy_data(tmp_path, x, *over, seed=1)
    b = npy_data(tmp_path, x, *over, seed=1)
    c = npy_data(tmp_path, x, *over, seed=2)
    for epoch in (0, 1, 5):
        for ra, rb in zip(epoch_rows(a, epoch), epoch_rows(b, epoch), strict=True):
            np.testing.assert_array_equal(ra, rb)
    e0, e1 = np.concatenate(epoch_rows(a, 0)), np.concatenate(epoch_rows(a, 1))
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, np.sort(e0))  # shuffled
    # the seed moves the split too; compare orders of the same rows via their ranks
    c0 = np.concatenate(epoch_rows(c, 0))
    assert not np.array_equal(np.argsort(e0), np.argsort(c0))
    # going back to an epoch gives its order again
    np.testing.assert_array_equal(np.concatenate(epoch_rows(a, 0)), e0)


def test_no_shuffle_keeps_sorted_order(tmp_path):
    data = npy_data(tmp_path, numbered(25), "data.shuffle=false", "train.batch_size=6",
                    "data.held_out=0.2")
    for epoch in (0, 3):
        np.testing.assert_array_equal(np.concatenate(epoch_rows(data, epoch)), data.train_rows)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_every_training_row_once_per_epoch(tmp_path, epoch):
    x = numbered(41)
    data = npy_data(tmp_path, x, "data.held_out=0.1", "train.batch_size=8")  # 37 train rows
    assert len(data.train_rows) == 37 and data.batches_per_epoch == 5
    batches = [data.micro_batch(epoch, j) for j in range(data.batches_per_epoch)]
    assert [len(b) for b in batches] == [8, 8, 8, 8, 5]  # partial last batch: the remainder
    assert all(b.dtype == np.float32 for b in batches)
    ids = np.concatenate([b[:, 0] for b in batches]).astype(int)
    assert sorted(ids.tolist()) == data.train_rows.tolist()
    for j, b in enumerate(batches):  # whole rows, in the order of batch_rows
        np.testing.assert_array_equal(b, x[data.batch_rows(epoch, j)])


def test_drop_last(tmp_path):
    x = numbered(41)
    keep = npy_data(tmp_path, x, "data.held_out=0.1", "train.batch_size=8")
    drop = npy_data(tmp_path, x, "data.held_out=0.1", "train.batch_size=8",
                    "data.drop_last=true")
    assert keep.batches_per_epoch == 5 and drop.batches_per_epoch == 4
    ids = np.concatenate([drop.micro_batch(0, j)[:, 0] for j in range(drop.batches_per_epoch)])
    assert len(ids) == 32 and len(set(ids.tolist())) == 32
    assert set(ids.tolist()) < set(drop.train_rows.tolist())
    exact = npy_data(tmp_path, numbered(40), "data.held_out=0", "train.batch_size=8",
                     "data.drop_last=true", name="y.npy")
    assert exact.batches_per_epoch == 5


def test_drop_last_with_too_few_samples(tmp_path):
    with pytest.raises(DataError) as e:
        npy_data(tmp_path, numbered(10), "data.held_out=0", "train.batch_size=16",
                 "data.drop_last=true")
    assert "no full micro-batch of 16" in str(e.value) and "drop_last" in str(e.value)
    data = npy_data(tmp_path, numbered(10), "data.held_out=0", "train.batch_size=16")
    assert data.batches_per_epoch == 1 and len(data.micro_batch(0, 0)) == 10


def test_shards_are_stitched_in_order(tmp_path):
    x = numbered(23)
    for k, (lo, hi) in enumerate([(0, 5), (5, 5), (5, 16), (16, 23)]):  # one empty shard
        np.save(tmp_path / f"part-{k}.npy", x[lo:hi])
    data = open_data(cfg_for("data.source=npy", f"data.path={tmp_path}/part-*.npy",
                             "data.held_out=0.2", "train.batch_size=4"), unit_range=False)
    assert data.source.rows == 23 and len(data.source.shards) == 4
    np.testing.assert_array_equal(data.rows(np.arange(23)), x)
    rows = np.array([22, 0, 5, 4, 16, 15, 9])
    np.testing.assert_array_equal(data.rows(rows), x[rows])


def test_train_and_held_samples_are_fixed_random_subsets_of_their_split(tmp_path):
    x = numbered(30)
    data = npy_data(tmp_path, x, "data.held_out=0.3")
    for sample, split in ((data.train_sample(5), data.train_rows),
                          (data.held_sample(4), data.held_rows)):
        ids = sample[:, 0].astype(int)  # numbered(): column 0 is the row's index
        assert len(set(ids)) == len(ids) and set(ids) <= set(split)
        np.testing.assert_array_equal(sample, x[ids])
        assert list(ids) == sorted(ids)
    assert not np.array_equal(data.train_sample(5), x[data.train_rows[:5]])  # not the first
    np.testing.assert_array_equal(data.train_sample(5), data.train_sample(5))
    np.testing.assert_array_equal(data.held_sample(100), x[data.held_rows])  # all there is


# ----------------------------------------------------------------------------- preprocessing


def test_uint8_default_scale(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 6)).astype(np.uint8)
    x[0, 0], x[1, 1] = 0, 255
    data = npy_data(tmp_path, x, "data.held_out=0", unit_range=True)
    assert data.scale == pytest.approx(1 / 255)
    got = data.rows(np.arange(30))
    np.testing.assert_allclose(got, x / 255, rtol=1e-6)
    assert got.max() == pytest.approx(1.0) and got.min() == 0.0


def test_idx_gzip_end_to_end(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (12, 3, 3)).astype(np.uint8)
    raw = struct.pack(">BBBB3I", 0, 0, 8, 3, 12, 3, 3) + x.tobytes()
    (tmp_path / "img.gz").write_bytes(gzip.compress(raw))
    data = open_data(cfg_for("data.source=idx", f"data.path={tmp_path}/img.gz",
                             "data.held_out=0"), unit_range=True)
    np.testing.assert_allclose(data.rows(np.arange(12)), x.reshape(12, 9) / 255, rtol=1e-6)


def test_explicit_scale_and_binarize(tmp_path):
    x = np.random.default_rng(2).random((40, 5)).astype(np.float32) * 4
    scaled = npy_data(tmp_path, x, "data.scale=0.25", "data.held_out=0", unit_range=True)
    np.testing.assert_allclose(scaled.rows(np.arange(40)), x * 0.25, rtol=1e-6)
    binary = npy_data(tmp_path, x, "data.scale=0.25", "data.binarize=0.5", "data.held_out=0",
                      unit_range=True)
    got = binary.rows(np.arange(40))
    assert set(np.unique(got).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(got, (x * np.float32(0.25) > 0.5).astype(np.float32))
    tensors = binary.preprocessing()
    assert float(tensors["scale"]) == 0.25 and float(tensors["binarize"]) == 0.5
    assert "mean" not in tensors


def test_standardize(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(300, 4)) * [1, 10, 0.1, 0] + [5, -3, 100, 7]).astype(np.float32)
    x[:60, :3] += 50  # shifts the mean of all rows from that of the training split
    data = npy_data(tmp_path, x, "data.standardize=true", "data.held_out=0.2",
                    "data.scale=0.5")
    train = data.rows(data.train_rows)
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train[:, :3].std(0), 1, rtol=1e-3)
    np.testing.assert_array_equal(train[:, 3], 0)  # a constant feature stays 0
    assert data.std is not None and data.std[3] == 1.0
    raw_train = x[data.train_rows].astype(np.float64) * 0.5
    np.testing.assert_allclose(data.mean, raw_train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.std[:3], raw_train[:, :3].std(0), rtol=1e-4)
    np.testing.assert_array_equal(data.feature_mean, 0)
    tensors = data.preprocessing()
    assert torch.equal(tensors["mean"], torch.from_numpy(data.mean))
    assert torch.equal(tensors["std"], torch.from_numpy(data.std))


def test_standardize_for_bernoulli_layer_rejected(tmp_path):
    x = np.random.default_rng(4).random((50, 3)).astype(np.float32)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        npy_data(tmp_path, x, "data.standardize=true", unit_range=True)


@pytest.mark.parametrize("binarize", [None, 0.3])
def test_feature_mean_of_preprocessed_training_rows(tmp_path, binarize):
    x = np.random.default_rng(5).integers(0, 256, (120, 7)).astype(np.uint8)
    x[:30] = 255  # so the mean of all rows differs from that of the training split
    over = ["data.held_out=0.25"] + ([f"data.binarize={binarize}"] if binarize else [])
    data = npy_data(tmp_path, x, *over, unit_range=True)
    want = x[data.train_rows].astype(np.float32) * np.float32(1 / 255)
    if binarize:
        want = (want > binarize).astype(np.float32)
    assert data.feature_mean.dtype == np.float32 and data.feature_mean.shape == (7,)
    np.testing.assert_allclose(data.feature_mean, want.mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.feature_mean, data.rows(data.train_rows).mean(0), rtol=1e-5)
    everything = x.astype(np.float32) * np.float32(1 / 255)
    if binarize:
        everything = (everything > binarize).astype(np.float32)
    assert not np.allclose(data.feature_mean, everything.mean(0), rtol=1e-3)


def test_feature_mean_large_data_in_chunks(tmp_path):
    x = np.random.default_rng(6).random((20000, 2)).astype(np.float32)  # > one 8192-row chunk
    x[-1, :] = 1.0
    data = npy_data(tmp_path, x, "data.held_out=0.1", unit_range=True)
    np.testing.assert_allclose(data.feature_mean, x[data.train_rows].mean(0), rtol=1e-5)


# ---------------------------------------------------------------------------------- checks


def _two_shards(tmp_path: Path, bad_value: float, row: int = 2, col: int = 1) -> str:
    a = np.full((4, 3), 0.5, np.float32)
    b = np.full((6, 3), 0.5, np.float32)
    b[row, col] = bad_value
    np.save(tmp_path / "s0.npy", a)
    np.save(tmp_path / "s1.npy", b)
    return f"data.path={tmp_path}/s*.npy"


@pytest.mark.parametrize("held_out", [0.0, 0.5])
def test_value_outside_unit_range_for_bernoulli(tmp_path, held_out):
    path = _two_shards(tmp_path, 3.0, row=2, col=1)
    cfg = cfg_for("data.source=npy", path, f"data.held_out={held_out}", "train.batch_size=2")
    with pytest.raises(DataError) as e:
        open_data(cfg, unit_range=True)
    msg = str(e.value)
    assert "s1.npy sample 2" in msg and "feature 1" in msg and "value 3" in msg
    assert "outside [0, 1]" in msg and "data.scale" in msg and "data.binarize" in msg
    # a gaussian first layer takes any real value
    data = open_data(cfg, unit_range=False)
    assert data.rows(np.array([6]))[0, 1] == 3.0


def test_negative_value_for_bernoulli(tmp_path):
    cfg = cfg_for("data.source=npy", _two_shards(tmp_path, -0.25, row=5, col=0))
    with pytest.raises(DataError, match=r"s1.npy sample 5 \(feature 0\)"):
        open_data(cfg, unit_range=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("extra", "unit_range"), [
    ([], False), ([], True), (["data.scale=0.5"], True),
    (["data.binarize=0.5"], False), (["data.binarize=0.5"], True),  # 0/1 must not hide NaN
    (["data.standardize=true"], False),
], ids=["real", "unit", "scale", "binarize-real", "binarize-unit", "standardize"])
def test_non_finite_values_named(tmp_path, bad, extra, unit_range):
    cfg = cfg_for("data.source=npy", _two_shards(tmp_path, bad, row=3, col=2), *extra)
    with pytest.raises(DataError) as e:
        open_data(cfg, unit_range=unit_range)
    msg = str(e.value)
    assert "non-finite" in msg and "NaN or Inf" in msg and "s1.npy sample 3" in msg


def test_non_finite_in_first_shard_and_beyond_a_chunk(tmp_path):
    x = np.zeros((9000, 2), np.float32)
    x[8500, 1] = np.nan  # in the second 8192-row chunk
    with pytest.raises(DataError, match="x.npy sample 8500"):
        npy_data(tmp_path, x)


def test_values_checked_again_when_read(tmp_path):
    x = np.full((20, 3), 0.5, np.float32)
    path = save(tmp_path, x)
    data = open_data(cfg_for("data.source=npy", f"data.path={path}", "data.held_out=0",
                             "train.batch_size=20", "data.shuffle=false"), unit_range=True)
    writer = np.load(path, mmap_mode="r+")  # the file changes under a running trainer
    writer[11, 0] = np.nan
    writer.flush()
    del writer
    with pytest.raises(DataError, match="x.npy sample 11"):
        data.micro_batch(0, 0)


# --------------------------------------------------------------------------------- Prefetcher


def _prefetch_data(tmp_path: Path) -> Data:
    return npy_data(tmp_path, numbered(50), "data.held_out=0.2", "train.batch_size=6")


def test_prefetcher_yields_batches_in_order(tmp_path):
    data = _prefetch_data(tmp_path)
    positions = [(m, m // data.batches_per_epoch, m % data.batches_per_epoch) for m in range(17)]
    reader = Prefetcher(data, positions, depth=2, dtype=torch.float64)
    try:
        items = list(reader)
    finally:
        reader.close()
    assert [m for m, _ in items] == list(range(17))
    for (_, t), (_, epoch, j) in zip(items, positions, strict=True):
        assert t.dtype == torch.float64
        np.testing.assert_array_equal(t.numpy(), data.micro_batch(epoch, j))
    assert not reader._thread.is_alive()


def test_depth_0_reads_the_same_batches_on_the_callers_thread(tmp_path):
    data = _prefetch_data(tmp_path)
    positions = [(m, m // data.batches_per_epoch, m % data.batches_per_epoch) for m in range(17)]
    ahead = Prefetcher(data, positions, depth=3, dtype=torch.float32)
    inline = Prefetcher(data, positions, depth=0, dtype=torch.float32)
    try:
        assert not inline._thread.is_alive()  # never started
        got, want = list(inline), list(ahead)
    finally:
        ahead.close()
        inline.close()
    assert [m for m, _ in got] == list(range(17))
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("depth", [0, 4])
def test_prefetcher_passes_reader_errors_on(tmp_path, depth):
    data = _prefetch_data(tmp_path)
    real = data.micro_batch

    def failing(epoch: int, j: int) -> np.ndarray:
        if j == 2:
            raise DataError("disk went away")
        return real(epoch, j)

    data.micro_batch = failing  # type: ignore[method-assign]
    reader = Prefetcher(data, [(m, 0, m) for m in range(5)], depth=depth, dtype=torch.float32)
    got = []
    with pytest.raises(DataError, match="disk went away"):
        for m, _ in reader:
            got.append(m)
    reader.close()
    assert got == [0, 1]


def test_prefetcher_passes_data_errors_from_files_on(tmp_path):
    x = np.full((12, 2), 0.25, np.float32)
    path = save(tmp_path, x)
    data = open_data(cfg_for("data.source=npy", f"data.path={path}", "data.held_out=0",
                             "train.batch_size=4", "data.shuffle=false"), unit_range=True)
    writer = np.load(path, mmap_mode="r+")
    writer[9, 1] = 7.0
    writer.flush()
    del writer
    reader = Prefetcher(data, [(m, 0, m) for m in range(3)], depth=1, dtype=torch.float32)
    with pytest.raises(DataError, match=r"x.npy sample 9 \(feature 1\)"):
        list(reader)
    reader.close()


def test_prefetcher_close_unfinished_is_prompt(tmp_path):
    data = _prefetch_data(tmp_path)
    endless = ((m, m // 5, m % 5) for m in itertools.count())
    reader = Prefetcher(data, endless, depth=2, dtype=torch.float32)
    first = next(iter(reader))
    assert first[0] == 0
    time.sleep(0.2)  # the reader fills the queue and waits on it
    t0 = time.monotonic()
    reader.close()
    assert time.monotonic() - t0 < 2.0
    assert not reader._thread.is_alive()


def test_prefetcher_times_out_on_a_stuck_reader(tmp_path):
    data = _prefetch_data(tmp_path)
    release = threading.Event()

    def stuck():
        yield (0, 0, 0)
        release.wait(10)

    reader = Prefetcher(data, stuck(), depth=2, dtype=torch.float32, timeout=0.3)
    it = iter(reader)
    assert next(it)[0] == 0
    with pytest.raises(TimeoutError, match="no micro-batch"):
        next(it)
    release.set()
    reader.close()
    assert not reader._thread.is_alive()
