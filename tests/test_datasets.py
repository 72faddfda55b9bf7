"""Data sources: IDX (plain and gzipped), .npy/.npz shards, bars, and the bundled data sets."""

from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipedbn.data import datasets
from pipedbn.data.datasets import Shard, open_source, read_idx, read_npy
from pipedbn.errors import DataError

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file's bytes: magic (0, 0, type, ndim), big-endian uint32 dims, big-endian data."""
    arr = np.asarray(arr)
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[arr.dtype.type], arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, cut: int = 0,
              tail: bytes = b"") -> str:
    raw = idx_bytes(arr)
    raw = (raw[:-cut] if cut else raw) + tail
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return str(path)


def images(n: int = 7, h: int = 5, w: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w)).astype(np.uint8)


def open_npy(paths: list[str], labels: str | None = None, key: str | None = None):
    return open_source("npy", paths, labels, key, 0, 4, 10)


def open_idx(paths: list[str], labels: str | None = None):
    return open_source("idx", paths, labels, None, 0, 4, 10)


# ----------------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_images_read_back_flattened(tmp_path, gz):
    x = images()
    path = write_idx(tmp_path / ("img.idx.gz" if gz else "img.idx"), x, gz=gz)
    shard = read_idx(path)
    assert isinstance(shard, Shard)
    assert (shard.rows, shard.features) == (7, 20)
    assert shard.array.shape == (7, 20)
    assert shard.array.dtype == np.uint8
    np.testing.assert_array_equal(shard.array, x.reshape(7, 20))
    if gz:  # decompressed into memory
        assert shard.path is None
    else:  # memory-mapped from the file, past the 16-byte header
        assert shard.path == path and shard.offset == 16
        assert isinstance(shard.array, np.memmap)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_wide_types_are_big_endian(tmp_path, gz, dtype):
    x = (np.arange(24).reshape(4, 3, 2) * 37 - 300).astype(dtype)
    if dtype is np.int8:
        x = (np.arange(24).reshape(4, 3, 2) - 12).astype(dtype)
    shard = read_idx(write_idx(tmp_path / "x.idx", x, gz=gz))
    assert isinstance(shard, Shard)
    np.testing.assert_array_equal(np.asarray(shard.array, dtype=np.float64),
                                  x.reshape(4, 6).astype(np.float64))


def test_idx_two_dimensional_and_one_dimensional_images(tmp_path):
    x2 = images(6, 9, 1).reshape(6, 9)
    s2 = read_idx(write_idx(tmp_path / "two.idx", x2))
    np.testing.assert_array_equal(s2.array, x2)
    x1 = np.arange(5, dtype=np.uint8)
    s1 = read_idx(write_idx(tmp_path / "one.idx", x1))
    assert (s1.rows, s1.features) == (5, 1)
    np.testing.assert_array_equal(s1.array[:, 0], x1)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_labels(tmp_path, gz):
    y = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    lab = read_idx(write_idx(tmp_path / "labels.idx", y, gz=gz), labels=True)
    assert isinstance(lab, np.ndarray)
    assert lab.dtype == np.int64
    np.testing.assert_array_equal(lab, y)


def test_idx_labels_must_be_one_dimensional(tmp_path):
    path = write_idx(tmp_path / "labels.idx", images())
    with pytest.raises(DataError, match="labels file must be 1-D"):
        read_idx(path, labels=True)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x03", b"\x00\x00\x07\x03", b"\x00\x00"],
                         ids=["nonzero", "bad-type", "short-file"])
def test_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "bad.idx"
    body = idx_bytes(images())[4:] if len(magic) == 4 else b""
    path.write_bytes(magic + body)
    with pytest.raises(DataError) as e:
        read_idx(str(path))
    msg = str(e.value)
    assert "bad.idx" in msg and "not an IDX file" in msg and "magic" in msg


def test_npy_file_is_not_an_idx_file(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(tmp_path / "x.npy"))


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "hdr.idx"
    path.write_bytes(idx_bytes(images())[:10])  # says 3 dims, holds 1.5 of them
    with pytest.raises(DataError, match="header is truncated"):
        read_idx(str(path))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_data(tmp_path, gz):
    path = write_idx(tmp_path / "img.idx", images(), gz=gz, cut=6)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    expected, actual = 16 + 7 * 5 * 4, 16 + 7 * 5 * 4 - 6
    assert "img.idx" in msg and "truncated" in msg
    assert "7x5x4" in msg and "uint8" in msg
    assert f"({expected} bytes)" in msg and f"has {actual} bytes" in msg
    assert ("decompressed" in msg) == gz


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_trailing_bytes(tmp_path, gz):
    path = write_idx(tmp_path / "img.idx", images(), gz=gz, tail=b"\x00" * 3)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert "trailing bytes" in msg and "truncated" not in msg
    assert "(156 bytes)" in msg and "has 159 bytes" in msg


def _cut_stream(gz: bytes) -> bytes:
    return gz[: len(gz) // 2]


def _bad_crc(gz: bytes) -> bytes:
    b = bytearray(gz)
    b[-8] ^= 0xFF  # CRC32 of the trailer
    return bytes(b)


def _scrambled(gz: bytes) -> bytes:
    b = bytearray(gz)
    for i in range(12, len(b) - 8):  # the deflate stream itself
        b[i] ^= 0x55
    return bytes(b)


@pytest.mark.parametrize("damage", [_cut_stream, _bad_crc, _scrambled],
                         ids=["truncated", "bad-crc", "scrambled"])
def test_idx_corrupt_gzip(tmp_path, damage):
    path = tmp_path / "img.idx.gz"
    path.write_bytes(damage(gzip.compress(idx_bytes(images(50)))))
    with pytest.raises(DataError) as e:
        read_idx(str(path))
    assert "img.idx.gz" in str(e.value) and "corrupt or truncated gzip" in str(e.value)


def test_open_source_idx_shards_and_labels(tmp_path):
    a, b = images(4, seed=1), images(3, seed=2)
    write_idx(tmp_path / "part-1.idx", a)
    write_idx(tmp_path / "part-0.idx.gz", b, gz=True)
    y = np.arange(7, dtype=np.uint8)
    lab = write_idx(tmp_path / "labels.idx", y)
    src = open_idx([str(tmp_path / "part-*")], labels=lab)
    assert [s.name for s in src.shards] == ["part-0.idx.gz", "part-1.idx"]  # sorted glob
    assert (src.rows, src.features) == (7, 20)
    assert src.default_scale == pytest.approx(1 / 255)
    np.testing.assert_array_equal(np.concatenate([s.array for s in src.shards]),
                                  np.concatenate([b, a]).reshape(7, 20))
    np.testing.assert_array_equal(src.labels, y)


def test_open_source_idx_label_problems(tmp_path):
    img = write_idx(tmp_path / "img.idx", images(7))
    short = write_idx(tmp_path / "labels-a.idx", np.arange(6, dtype=np.uint8))
    write_idx(tmp_path / "labels-b.idx", np.arange(7, dtype=np.uint8))
    with pytest.raises(DataError, match="6 labels for 7 samples"):
        open_idx([img], labels=short)
    with pytest.raises(DataError, match="matches 2 files"):
        open_idx([img], labels=str(tmp_path / "labels-*.idx"))


def test_idx_float_data_defaults_to_scale_one(tmp_path):
    path = write_idx(tmp_path / "f.idx", np.zeros((3, 2, 2), np.float32))
    assert open_idx([path]).default_scale == 1.0


def test_idx_features_must_agree(tmp_path):
    write_idx(tmp_path / "a.idx", images(3, 5, 4))
    write_idx(tmp_path / "b.idx", images(3, 4, 4))
    with pytest.raises(DataError) as e:
        open_idx([str(tmp_path / "*.idx")])
    assert "b.idx" in str(e.value) and "16 features" in str(e.value) and "20" in str(e.value)


# ------------------------------------------------------------------------------------ .npy files


def test_npy_is_memory_mapped(tmp_path):
    x = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    shard, key = read_npy(str(tmp_path / "x.npy"), None)
    assert key is None
    assert shard.path == str(tmp_path / "x.npy") and shard._array is None  # lazily mapped
    assert isinstance(shard.array, np.memmap)
    assert shard.array.dtype == np.float32
    np.testing.assert_array_equal(shard.array, x)


def test_npy_three_dimensional_is_flattened(tmp_path):
    x = np.arange(5 * 2 * 3, dtype=np.int16).reshape(5, 2, 3)
    np.save(tmp_path / "x.npy", x)
    shard, _ = read_npy(str(tmp_path / "x.npy"), None)
    assert (shard.rows, shard.features) == (5, 6)
    np.testing.assert_array_equal(shard.array, x.reshape(5, 6))


def test_npy_fortran_order(tmp_path):
    x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(4, 3))
    np.save(tmp_path / "f.npy", x)
    shard, _ = read_npy(str(tmp_path / "f.npy"), None)
    np.testing.assert_array_equal(shard.array, x)
    np.save(tmp_path / "f3.npy", np.asfortranarray(np.zeros((2, 3, 4))))
    with pytest.raises(DataError, match="Fortran-ordered"):
        read_npy(str(tmp_path / "f3.npy"), None)


def test_npy_glob_reads_shards_in_sorted_order(tmp_path):
    parts = {name: np.full((n, 4), i, np.float32) + np.arange(n)[:, None] / 100
             for i, (name, n) in enumerate([("shard-02", 2), ("shard-00", 3), ("shard-01", 5)])}
    for name, x in parts.items():  # written out of order
        np.save(tmp_path / f"{name}.npy", x)
    src = open_npy([str(tmp_path / "shard-*.npy")])
    assert [s.name for s in src.shards] == ["shard-00.npy", "shard-01.npy", "shard-02.npy"]
    assert (src.rows, src.features) == (10, 4)
    assert src.labels is None and src.default_scale == 1.0
    want = np.concatenate([parts["shard-00"], parts["shard-01"], parts["shard-02"]])
    np.testing.assert_array_equal(np.concatenate([s.array for s in src.shards]), want)


def test_npy_paths_and_globs_mixed_keep_given_order(tmp_path):
    for name in ("a", "b", "c"):
        np.save(tmp_path / f"{name}.npy", np.zeros((1, 2), np.uint8))
    src = open_npy([str(tmp_path / "c.npy"), str(tmp_path / "[ab].npy")])
    assert [s.name for s in src.shards] == ["c.npy", "a.npy", "b.npy"]
    assert src.default_scale == pytest.approx(1 / 255)  # all uint8


def test_npy_shard_with_other_feature_count_is_named(tmp_path):
    np.save(tmp_path / "s0.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "s1.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "s2.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(DataError) as e:
        open_npy([str(tmp_path / "s*.npy")])
    msg = str(e.value)
    assert "s2.npy" in msg and "5 features" in msg and "s0.npy" in msg and "4" in msg


@pytest.mark.parametrize("cut", [1, 40])
def test_npy_truncated(tmp_path, cut):
    np.save(tmp_path / "x.npy", np.zeros((10, 8), np.float32))
    path = tmp_path / "x.npy"
    full = path.read_bytes()
    path.write_bytes(full[:-cut])
    with pytest.raises(DataError) as e:
        read_npy(str(path), None)
    msg = str(e.value)
    assert "x.npy" in msg and "truncated" in msg and "mmap length" not in msg
    assert f"({len(full)} bytes)" in msg and f"has {len(full) - cut} bytes" in msg


def test_npy_trailing_bytes(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((10, 8), np.float32))
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(DataError, match="has trailing bytes"):
        read_npy(str(path), None)


@pytest.mark.parametrize("x", [
    np.array([["a", "b"], ["c", "d"]]),
    np.array([[1, None], [2, 3]], dtype=object),
    np.zeros((2, 2), np.complex64),
    np.zeros((2, 2), dtype=[("a", np.float32), ("b", np.int8)]),
], ids=["str", "object", "complex", "structured"])
def test_npy_non_numeric_dtype_rejected(tmp_path, x):
    np.save(tmp_path / "x.npy", x, allow_pickle=True)
    with pytest.raises(DataError) as e:
        read_npy(str(tmp_path / "x.npy"), None)
    assert "x.npy" in str(e.value) and "not numeric" in str(e.value)


def test_npy_bool_is_numeric(tmp_path):
    x = np.eye(3, dtype=bool)
    np.save(tmp_path / "b.npy", x)
    shard, _ = read_npy(str(tmp_path / "b.npy"), None)
    np.testing.assert_array_equal(shard.array, x)


def test_npy_one_dimensional_rejected(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(DataError, match=r"need \(samples, features\)"):
        read_npy(str(tmp_path / "v.npy"), None)


@pytest.mark.parametrize("content", [b"", b"hello, this is not numpy", b"\x93NUMP"])
def test_not_an_npy_file(tmp_path, content):
    (tmp_path / "x.npy").write_bytes(content)
    with pytest.raises(DataError, match="not a .npy array"):
        read_npy(str(tmp_path / "x.npy"), None)


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    """Permissions (or an I/O error) while opening or mapping a file: a DataError naming it.
    Faked, since the tests may run as root, who reads any file."""
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 3), np.float32))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(datasets, "read_npy", denied)
    with pytest.raises(DataError, match=r"x\.npy: cannot read \(Permission denied\)"):
        open_npy([str(path)])
    monkeypatch.undo()
    shard, _ = read_npy(str(path), None)
    monkeypatch.setattr(np, "memmap", denied)
    with pytest.raises(DataError, match=r"x\.npy: cannot read \(Permission denied\)"):
        _ = shard.array


def test_glob_matching_nothing_and_missing_path(tmp_path):
    with pytest.raises(DataError) as e:
        open_npy([str(tmp_path / "nothing-*.npy")])
    assert "matches no file" in str(e.value) and "nothing-*.npy" in str(e.value)
    with pytest.raises(DataError) as e:
        open_npy([str(tmp_path / "missing.npy")])
    assert "no such file" in str(e.value) and "missing.npy" in str(e.value)
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(DataError, match="is a directory; name its files or a glob"):
        open_npy([str(tmp_path / "dir.npy")])


# ------------------------------------------------------------------------------------ .npz files


def test_npz_member_is_memory_mapped(tmp_path):
    x = np.random.default_rng(1).random((9, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    shard, key = read_npy(str(tmp_path / "d.npz"), None)
    assert key == "x" and shard.name == "d.npz[x]"
    assert (shard.rows, shard.features) == (9, 6)
    assert isinstance(shard.array, np.memmap)
    np.testing.assert_array_equal(shard.array, x.reshape(9, 6))


def test_npz_single_unnamed_array_is_chosen(tmp_path):
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.savez(tmp_path / "d.npz", x)  # stored as arr_0
    shard, key = read_npy(str(tmp_path / "d.npz"), None)
    assert key == "arr_0"
    np.testing.assert_array_equal(shard.array, x)


def test_npz_key_chooses_among_arrays(tmp_path):
    a = np.zeros((4, 3), np.float32)
    b = np.arange(10, dtype=np.float64).reshape(5, 2)
    c = np.ones((2, 7), np.uint8)
    np.savez(tmp_path / "d.npz", a=a, b=b, c=c)
    for k, want in (("a", a), ("b", b), ("c", c)):
        shard, key = read_npy(str(tmp_path / "d.npz"), k)
        assert key == k and shard.name == f"d.npz[{k}]"
        np.testing.assert_array_equal(shard.array, want)


@pytest.mark.parametrize("key", [None, "z"])
def test_npz_unknown_key_lists_arrays(tmp_path, key):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(DataError) as e:
        read_npy(str(tmp_path / "d.npz"), key)
    msg = str(e.value)
    assert f"no array {key or 'x'!r}" in msg and "a, b" in msg and "data.key" in msg


def test_npz_compressed_rejected(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros((20, 20), np.float32))
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert zf.getinfo("x.npy").compress_type != zipfile.ZIP_STORED
    with pytest.raises(DataError) as e:
        read_npy(str(tmp_path / "c.npz"), None)
    msg = str(e.value)
    assert "c.npz" in msg and "compressed" in msg and "np.savez" in msg


def test_npz_member_checked_like_npy(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.array([["a"], ["b"]]))
    with pytest.raises(DataError, match=r"s.npz\[x\].*not numeric"):
        read_npy(str(tmp_path / "s.npz"), None)


def test_npz_labels(tmp_path):
    x0, y0 = np.zeros((3, 4), np.float32), np.array([1, 2, 3])
    x1, y1 = np.ones((2, 4), np.float32), np.array([7, 8], dtype=np.uint8)
    np.savez(tmp_path / "p0.npz", x=x0, y=y0)
    np.savez(tmp_path / "p1.npz", x=x1, y=y1)
    src = open_npy([str(tmp_path / "p*.npz")], labels="y")
    assert src.rows == 5 and src.features == 4
    assert src.labels is not None and src.labels.dtype == np.int64
    np.testing.assert_array_equal(src.labels, [1, 2, 3, 7, 8])
    np.testing.assert_array_equal(np.concatenate([s.array for s in src.shards]),
                                  np.concatenate([x0, x1]))


def test_npz_label_problems(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4)), y=np.arange(2))
    with pytest.raises(DataError) as e:
        open_npy([str(tmp_path / "d.npz")], labels="labels")
    assert "no labels array 'labels'" in str(e.value) and "x, y" in str(e.value)
    with pytest.raises(DataError, match="2 labels for 3 samples"):
        open_npy([str(tmp_path / "d.npz")], labels="y")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    with pytest.raises(DataError, match="plain.npy is a .npy; labels need .npz"):
        open_npy([str(tmp_path / "plain.npy")], labels="y")


# ------------------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("kind", ["npy", "npz", "idx"])
def test_pickled_file_shard_carries_no_data(tmp_path, kind):
    x = np.random.default_rng(2).integers(0, 256, (2000, 64)).astype(np.uint8)
    if kind == "npy":
        np.save(tmp_path / "x.npy", x)
        shard, _ = read_npy(str(tmp_path / "x.npy"), None)
    elif kind == "npz":
        np.savez(tmp_path / "x.npz", x=x)
        shard, _ = read_npy(str(tmp_path / "x.npz"), None)
    else:
        shard = read_idx(write_idx(tmp_path / "x.idx", x))
    np.testing.assert_array_equal(shard.array, x)  # read, so mapped in this process
    assert shard._array is not None
    blob = pickle.dumps(shard)
    assert len(blob) < 1000 < x.nbytes // 100
    assert shard._array is not None  # pickling does not unmap the original
    copy = pickle.loads(blob)
    assert copy._array is None
    assert (copy.rows, copy.features, copy.offset) == (shard.rows, shard.features, shard.offset)
    np.testing.assert_array_equal(copy.array, x)


def test_pickled_in_memory_shard_keeps_its_data():
    x = np.arange(600, dtype=np.float32).reshape(100, 6)
    copy = pickle.loads(pickle.dumps(datasets.in_memory("mem", x)))
    np.testing.assert_array_equal(copy.array, x)


# ---------------------------------------------------------------------------------------- bars


def _is_bars_or_stripes(img: np.ndarray) -> bool:
    rows_equal = bool((img == img[:, :1]).all())  # each row constant: horizontal bars
    cols_equal = bool((img == img[:1, :]).all())  # each column constant: vertical stripes
    return rows_equal or cols_equal


def test_bars_and_stripes_are_valid():
    src = datasets.bars_and_stripes(5, 400, seed=3)
    x = src.shards[0].array
    assert (src.rows, src.features) == (400, 25)
    assert src.labels is None and src.default_scale == 1.0
    assert set(np.unique(x).tolist()) <= {0, 1}
    imgs = x.reshape(400, 5, 5)
    assert all(_is_bars_or_stripes(img) for img in imgs)
    rows_only = [bool((i == i[:, :1]).all()) and not (i == i[:1, :]).all() for i in imgs]
    cols_only = [bool((i == i[:1, :]).all()) and not (i == i[:, :1]).all() for i in imgs]
    assert sum(rows_only) > 50 and sum(cols_only) > 50  # both orientations occur
    # every one of the 2 * 2**5 - 2 distinct patterns (blank and full are both) is drawn
    assert len({img.tobytes() for img in imgs}) == 2 * 2**5 - 2


def test_bars_validity_checker_rejects_other_images():
    img = np.zeros((4, 4), np.uint8)
    img[1, 2] = 1
    assert not _is_bars_or_stripes(img)


def test_bars_deterministic_for_a_seed():
    a = datasets.bars_and_stripes(4, 200, seed=7).shards[0].array
    b = datasets.bars_and_stripes(4, 200, seed=7).shards[0].array
    c = datasets.bars_and_stripes(4, 200, seed=8).shards[0].array
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_open_source_bars_uses_config_sizes():
    src = open_source("bars", [], None, None, 5, 3, 17)
    assert (src.rows, src.features) == (17, 9)
    np.testing.assert_array_equal(src.shards[0].array,
                                  datasets.bars_and_stripes(3, 17, 5).shards[0].array)


# ----------------------------------------------------------------------------- bundled data sets


def test_mnist5k():
    src = open_source("mnist5k", [], None, None, 0, 4, 10)
    x = src.shards[0].array
    assert (src.rows, src.features) == (5000, 784) and x.shape == (5000, 784)
    assert x.dtype == np.uint8 and x.max() == 255 and 0.05 < (x > 0).mean() < 0.5
    assert src.labels is not None and src.labels.shape == (5000,)
    assert sorted(np.unique(src.labels).tolist()) == list(range(10))
    assert src.default_scale == pytest.approx(1 / 255)


def test_digits():
    src = open_source("digits", [], None, None, 0, 4, 10)
    x = src.shards[0].array
    assert (src.rows, src.features) == (1797, 64)
    assert x.min() == 0 and x.max() == 16
    assert src.labels is not None and src.labels.shape == (1797,)
    assert sorted(np.unique(src.labels).tolist()) == list(range(10))
    assert src.default_scale == pytest.approx(1 / 16)


def test_bundled_data_needs_its_package():
    with pytest.raises(DataError, match="pip install no_such_package_pipedbn"):
        datasets._package_file("no_such_package_pipedbn", "data.csv")
    with pytest.raises(DataError, match="reinstall"):
        datasets._package_file("numpy", "no", "such.csv.gz")
