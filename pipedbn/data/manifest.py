"""The data manifest (``data.json`` in the run directory): what the value check saw, so that
later processes and resumes of the run trust it without reading the values again.

The check (``loader.measure``) reads a bounded sample once, on one process (every other value
is checked as its micro-batch is read). The manifest records,
for each file behind the data, its size, its modification time (nanoseconds) and a cheap
identity (a BLAKE2b digest of its first and last 64 KiB: O(files), not O(samples)), and the
statistics the check took (the training split's feature mean, standardisation's mean and
standard deviation). A process that opens the data by its headers only (``open_data(values=
False)``) takes the statistics from here after ``verify`` has found every file unchanged; a
file whose size, time or identity changed is refused, naming it: its values were never checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipedbn.data.loader import Data
from pipedbn.errors import DataError

MANIFEST_FILE = "data.json"
_EDGE = 64 * 1024
_VERSION = 1


def file_identity(path: str) -> dict[str, Any]:
    """Size, modification time and a digest of the first and last ``_EDGE`` bytes of ``path``."""
    st = os.stat(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if st.st_size > _EDGE:
            f.seek(max(_EDGE, st.st_size - _EDGE))
            h.update(f.read(_EDGE))
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "digest": h.hexdigest()}


def _files(data: Data) -> list[str]:
    """The files the data's values live in (none for the bundled and synthetic sets, which are
    read whole into memory)."""
    seen: dict[str, None] = {}
    for shard in data.source.shards:
        if shard.path is not None:
            seen[shard.path] = None
    return list(seen)


def _floats(x: np.ndarray | None) -> list[float] | None:
    return None if x is None else [float(v) for v in x]  # float32 -> float64: exact


def manifest_bytes(data: Data) -> bytes:
    """``MANIFEST_FILE``'s contents for checked ``data``."""
    assert data.checked
    record = {"version": _VERSION, "description": data.source.description,
              "rows": data.source.rows, "features": data.features,
              "files": [file_identity(p) for p in _files(data)],
              "feature_mean": _floats(data.feature_mean), "mean": _floats(data.mean),
              "std": _floats(data.std), "unit_range": data.unit_range}
    return (json.dumps(record) + "\n").encode()


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest, or None when it has none (its check has not run yet)."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); remove it to have the data checked "
                        "again") from None
    if not isinstance(record, dict) or record.get("version") != _VERSION:
        raise DataError(f"{path}: not a data manifest this pipedbn wrote; remove it to have "
                        "the data checked again")
    return record


def verify(record: dict[str, Any], data: Data, where: Path) -> None:
    """Refuse data that is not what the manifest's check saw: another set of files, or a file
    whose size, modification time or identity changed since (one line naming the file)."""
    files = _files(data)
    other = DataError(f"data: the data ({data.source.description}) is not what the run in "
                      f"{where} checked ({record['description']}); resume with the run's own "
                      "data, or start a new run")
    if [os.path.abspath(p) for p in files] != [f["path"] for f in record["files"]]:
        raise other
    for path, seen in zip(files, record["files"], strict=True):
        now = file_identity(path)
        for key, what in (("size", "size differs"), ("mtime_ns", "modification time differs"),
                          ("digest", "first or last 64 KiB differ")):
            if now[key] != seen[key]:
                raise DataError(
                    f"data: {path} changed since the run in {where} checked it (its {what}: "
                    f"{seen[key]} then, {now[key]} now), so its values are unchecked; restore "
                    "the file, or start a new run on the new data")
    if record["rows"] != data.source.rows or record["features"] != data.features:
        raise other


def trust(record: dict[str, Any], data: Data) -> None:
    """Take the statistics of the manifest's check into ``data`` (after ``verify``)."""
    data.feature_mean = np.asarray(record["feature_mean"], np.float32)
    if record["mean"] is not None:
        data.mean = np.asarray(record["mean"], np.float32)
        data.std = np.asarray(record["std"], np.float32)
    data.unit_range = bool(record["unit_range"])
    data.checked = True
