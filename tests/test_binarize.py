"""Stochastic binarisation is a pure function of (seed, sample, pixel); thresholding unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.binarize import stochastic_binarize, uniforms
from pipedbn.data.loader import open_data
from pipedbn.errors import ConfigError
from pipedbn.model.dbn import Model, load


def grey(n: int, f: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, f), dtype=np.float32)


def test_same_seed_same_bits_whatever_the_order_or_batching() -> None:
    x, rows = grey(40, 30), np.arange(100, 140)
    whole = stochastic_binarize(x.copy(), rows, seed=7)
    assert np.array_equal(whole, stochastic_binarize(x.copy(), rows, seed=7))
    perm = np.random.default_rng(1).permutation(40)
    assert np.array_equal(stochastic_binarize(x[perm], rows[perm], 7), whole[perm])
    halves = np.concatenate([stochastic_binarize(x[:13], rows[:13], 7),
                             stochastic_binarize(x[13:], rows[13:], 7)])
    assert np.array_equal(halves, whole)


def test_the_seed_and_the_sample_index_change_the_bits() -> None:
    x = np.full((200, 50), 0.5, np.float32)
    a = stochastic_binarize(x, np.arange(200), 0)
    assert not np.array_equal(a, stochastic_binarize(x, np.arange(200), 1))
    assert not np.array_equal(a, stochastic_binarize(x, np.arange(1, 201), 0))
    assert not np.array_equal(a[0], a[1])  # samples of equal values still differ


def test_bits_follow_the_intensity() -> None:
    x = np.tile(np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32), (20000, 1))
    b = stochastic_binarize(x, np.arange(20000), 3)
    assert set(np.unique(b)) <= {0.0, 1.0} and b.dtype == np.float32
    assert b[:, 0].max() == 0 and b[:, 4].min() == 1  # 0 stays 0, 1 stays 1
    assert np.allclose(b.mean(0), [0, 0.1, 0.5, 0.9, 1], atol=0.01)


def test_uniforms_are_in_unit_interval_and_nan_stays() -> None:
    u = uniforms(5, np.arange(1000), 64)
    assert u.min() >= 0 and u.max() < 1 and abs(float(u.mean()) - 0.5) < 0.01
    x = grey(3, 4)
    x[1, 2] = np.nan
    assert np.isnan(stochastic_binarize(x, np.arange(3), 0)[1, 2])


def _cfg(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: digits\nlayers:\n  - hidden: 4\n")
    return resolve_defaults(load_config(path, list(overrides)))


def test_training_reads_the_fixed_binarised_set_in_any_epoch_order(tmp_path: Path) -> None:
    data = open_data(_cfg(tmp_path, "data.stochastic_binarize=11"), True)
    for epoch in (0, 3):
        rows = data.batch_rows(epoch, 2)
        expected = stochastic_binarize(data.raw(rows) * np.float32(data.scale), rows, 11)
        assert np.array_equal(data.micro_batch(epoch, 2), expected)
    assert int(data.preprocessing()["stochastic_binarize"]) == 11


def test_model_preprocess_repeats_the_training_bits(tmp_path: Path) -> None:
    data = open_data(_cfg(tmp_path, "data.stochastic_binarize=11"), True)
    params = [{"weight": torch.zeros(64, 4), "visible_bias": torch.zeros(64),
               "hidden_bias": torch.zeros(4)}]
    model = Model(["bernoulli"], params, scale=data.scale, stochastic_seed=11)
    rows = data.held_rows[:10]
    assert np.array_equal(model.preprocess(data.raw(rows), rows).numpy(), data.rows(rows))
    saved = tmp_path / "m.safetensors"
    model.save(saved)
    assert load(saved).stochastic_seed == 11


def test_thresholding_is_unchanged(tmp_path: Path) -> None:
    data = open_data(_cfg(tmp_path, "data.binarize=0.5"), True)
    rows = data.train_rows[:50]
    raw = data.raw(rows)
    assert np.array_equal(data.rows(rows), (raw * np.float32(data.scale) > 0.5)
                          .astype(np.float32))
    assert data.stochastic_seed is None


def test_threshold_and_stochastic_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set either it or data.binarize"):
        _cfg(tmp_path, "data.binarize=0.5", "data.stochastic_binarize=0")
