"""The run directory: creation, atomic writes, and ``metrics.jsonl``.

Layout (DESIGN §3): ``config.yaml`` (the resolved config), ``preprocess.pt`` (how raw
data becomes layer 0's input), ``metrics.jsonl`` and ``tb/`` (``monitor.py``),
``split.npz`` (the rows trained on and held out), ``checkpoints/final/layer-<i>.pt`` (each
layer's full training state), ``model.safetensors``
(the exported DBN), ``stages.json`` (each pipeline stage's timings) and, for a run that failed,
``failures/stage-<r>.json`` (what each stage saw) and ``failure.json`` (the stage that failed
first and why).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipedbn.balancer.runtime import check_memory
from pipedbn.config import Config, dump_yaml
from pipedbn.data.loader import Data
from pipedbn.data.manifest import MANIFEST_FILE, manifest_bytes
from pipedbn.data.prepare import run_data
from pipedbn.errors import RunDirError

PREPROCESS_FILE = "preprocess.pt"
"""How raw data becomes layer 0's input (``Data.preprocessing``; ``model.dbn`` reads it)."""

def _umask() -> int:
    """The process's umask, read once at import (before any thread starts): ``os.umask`` can
    only be read by setting it, which would race with other threads creating files."""
    try:  # Linux says it in /proc, without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()
FAILURE_FILE = "failure.json"
FAILURES_DIR = "failures"


def choose_run_dir(cfg: Config) -> Path:
    """``run.dir`` if given, else ``<out>/<name>/<timestamp>/`` (made unique with a suffix)."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    base = Path(cfg.run.out) / cfg.run.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def claim_run_dir(cfg: Config, contents: Callable[[Path], dict[str, bytes]],
                  token: str | None = None, on_claim: Callable[[Path], None] | None = None
                  ) -> Path:
    """Create the run directory holding ``contents(path)`` (file name: bytes), in one step.

    The files are written into ``.<name>.claim-<token>`` beside it, which is then renamed into
    place: a process killed at any moment leaves no run directory, or a whole one (what a
    restarted rank relies on to recognise its run). ``token`` names the temporary directory (a
    restart with the same token removes its predecessor's); ``on_claim`` runs once the name is
    taken, before the files are written. ``run.dir`` must be absent or empty; a timestamped
    directory is reserved with ``mkdir`` first (parallel launches)."""
    if cfg.run.dir:
        path = Path(cfg.run.dir)
        check_run_dir(path)
    else:
        path = _reserve(cfg)
    if on_claim is not None:
        on_claim(path)
    tmp = path.parent / f".{path.name}.claim-{token or uuid.uuid4().hex}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = contents(path)
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        try:
            os.rename(tmp, path)  # replaces an empty directory; refuses one that is not
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EBUSY):
                raise
            # run.dir is a mount point: fill it in place, in the order of ``contents`` (its
            # marks first, config.yaml last: see resume.torchrun_resume_dir)
            for name, data in files.items():
                atomic_write(path / name, data)
            shutil.rmtree(tmp)
        _fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            check_run_dir(path)  # someone wrote into it meanwhile: say so
        raise RunDirError(f"cannot create or write the run directory {path}: {e.strerror}; "
                          "choose a writable run.out or run.dir") from None
    return path


def _reserve(cfg: Config) -> Path:
    """A new timestamped run directory, empty, taken atomically against parallel launches."""
    for _ in range(100):
        path = choose_run_dir(cfg)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            continue  # another run took it in the meantime
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {path}: {e.strerror}; "
                              "choose a writable run.out or run.dir") from None
        return path
    raise RunDirError(f"could not claim a new run directory under {cfg.run.out}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard_run_dir(path: Path) -> None:
    """Remove a run directory this process has just claimed, when the run cannot start after
    all; it holds only what ``start_run`` wrote (an empty ``run.dir`` given by the user stays)."""
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    with contextlib.suppress(OSError):
        if path.parent.name != "" and not any(path.iterdir()):
            path.rmdir()


def check_run_dir(path: Path) -> None:
    """Refuse a run directory that holds anything already (before any work is done)."""
    if path.exists():
        if not path.is_dir():
            raise RunDirError(f"run directory {path} exists and is not a directory")
        if any(path.iterdir()):
            raise RunDirError(f"run directory {path} exists and is not empty; choose another "
                              "run.dir, or leave run.dir unset for a new timestamped one")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes files private; run files are not
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path: Path, obj: Any) -> None:
    """``torch.save`` through ``atomic_write``; the file loads with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write(run_dir / "config.yaml", dump_yaml(cfg).encode())


def layer_state_path(run_dir: Path, layer: int, tag: str = "final") -> Path:
    return run_dir / "checkpoints" / tag / f"layer-{layer}.pt"


def start_run(cfg: Config, prepared: bool = False, marks: dict[str, bytes] | None = None,
              token: str | None = None, on_claim: Callable[[Path], None] | None = None
              ) -> tuple[Path, Data]:
    """Open and check the data (its statistics' sample, ``data.loader.measure``), then claim the run
    directory with ``config.yaml``, the preprocessing, the split, the data manifest and
    ``marks`` (more files) in it; nothing is written before every check has passed
    (``claim_run_dir`` says what ``token`` and ``on_claim`` do). ``prepared``: the local
    launcher has done this already (``cfg.run.dir`` holds its config): the data is opened by
    its headers and trusted by the manifest (``data.prepare.run_data``)."""
    run_dir = Path(cfg.run.dir) if prepared and cfg.run.dir else choose_run_dir(cfg)
    if prepared:
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: not a prepared run directory (no config.yaml)")
    else:
        check_run_dir(run_dir)
    data = run_data(cfg, run_dir if prepared else None, values=True)
    check_memory(cfg, data.features)
    if prepared:
        keep_manifest(run_dir, data)
        return run_dir, data

    def contents(path: Path) -> dict[str, bytes]:
        cfg.run.dir = str(path)
        return {**(marks or {}), PREPROCESS_FILE: _preprocess_bytes(data),
                MANIFEST_FILE: manifest_bytes(data),
                SPLIT_FILE: split_bytes(data.train_rows, data.held_rows),
                "config.yaml": dump_yaml(cfg).encode()}

    return claim_run_dir(cfg, contents, token, on_claim), data


def keep_manifest(run_dir: Path, data: Data) -> None:
    """Write the data manifest of a run made before pipedbn kept one, its values just checked,
    so that the run's other processes and later resumes trust them."""
    if not (run_dir / MANIFEST_FILE).is_file():
        atomic_write(run_dir / MANIFEST_FILE, manifest_bytes(data))


def _preprocess_bytes(data: Data) -> bytes:
    buf = io.BytesIO()
    torch.save(data.preprocessing(), buf)
    return buf.getvalue()


STORAGE_ERRORS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def storage_problem(run_dir: Path, e: BaseException | None = None) -> str | None:
    """What is wrong with the run directory's storage, if that is why ``e`` happened: the
    directory vanished (its config.yaml is gone), or a write failed with EROFS, ENOSPC or
    EDQUOT. None when the storage is not to blame."""
    inside = isinstance(e, FileNotFoundError) and str(e.filename).startswith(f"{run_dir}/")
    if inside or not (run_dir / "config.yaml").is_file():  # (its removal may be under way)
        return (f"the run directory {run_dir} was removed (or its filesystem unmounted) "
                "during the run; start the run again")
    if isinstance(e, OSError) and e.errno in STORAGE_ERRORS:
        return (f"cannot write to the run directory {run_dir}: {e.strerror} "
                f"({errno.errorcode[e.errno]}); make room or make it writable, then continue "
                f"with: pipedbn train {run_dir / 'config.yaml'} --resume {run_dir}")
    return None


def probe_storage(run_dir: Path) -> str | None:
    """``storage_problem`` found by writing a small file into the run directory now (the
    launcher's check when no stage could record why it failed)."""
    try:
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return storage_problem(run_dir, e)
    return storage_problem(run_dir)


SPLIT_FILE = "split.npz"
"""Rows of the data (after ``data.limit``) the run trained on (``train``) and kept out
(``held_out``: the monitoring and evaluation sample, never trained on), sorted."""


def split_bytes(train: np.ndarray, held_out: np.ndarray) -> bytes:
    """``SPLIT_FILE``'s contents (written with the claim of the run directory)."""
    buf = io.BytesIO()
    np.savez(buf, train=train.astype(np.int64), held_out=held_out.astype(np.int64))
    return buf.getvalue()


def read_split(run_dir: Path) -> dict[str, np.ndarray]:
    """``{"train": rows, "held_out": rows}`` of a run directory (``SPLIT_FILE``)."""
    path = Path(run_dir) / SPLIT_FILE
    try:
        with np.load(path, allow_pickle=False) as f:
            return {"train": f["train"], "held_out": f["held_out"]}
    except (OSError, KeyError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable or missing ({e}); runs made before pipedbn "
                          "saved its split have none (the split is drawn from seed: "
                          "data.py open_data)") from None


def record_failure(run_dir: Path, record: dict[str, Any]) -> None:
    """Keep a stage's failure in ``failures/stage-<seen_by>.json`` (best effort)."""
    with contextlib.suppress(OSError):  # else the stage's own message still says it
        atomic_write(run_dir / FAILURES_DIR / f"stage-{record['seen_by']}.json",
                     (json.dumps(record) + "\n").encode())


def root_failure(run_dir: Path) -> dict[str, Any] | None:
    """The failure that stopped the run, from every stage's record.

    A stage's own error wins (the earliest). Otherwise every record blames a neighbour, and
    blame is followed from stage to stage until a stage that recorded nothing (it died or hung):
    along timeouts first (a stage that timed out waited on a silent neighbour; gloo then closes
    its links, so its other neighbour sees "connection closed" and blames it wrongly), and along
    closed connections when there was no timeout."""
    records = []
    for path in sorted((run_dir / FAILURES_DIR).glob("stage-*.json")):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
            continue
        if _is_record(record):
            records.append(record)  # else not a record this code wrote: an edited file
    if not records:
        return None
    records.sort(key=lambda r: r.get("time", 0.0))
    own = [r for r in records if r["kind"] == "own"]
    if own:
        return own[0]
    for kind in ("timeout", "closed"):
        chain = {r["seen_by"]: r for r in records if r["kind"] == kind}
        if not chain:
            continue
        record = next(r for r in records if r["kind"] == kind)
        trail = [record]
        while record["stage"] in chain:
            record = chain[record["stage"]]
            if record in trail:
                # a cycle: a hung stage woke up (SIGCONT, the end of a stall) and its own waits
                # ran out, blaming a neighbour; the blame that came first is the real one
                cycle = trail[trail.index(record):]
                return min(cycle, key=lambda r: r.get("time", 0.0))
            trail.append(record)
        return record
    return records[0]


def _is_record(record: Any) -> bool:
    """A failure record as ``failure_record`` writes it (the fields ``root_failure`` follows)."""
    return (isinstance(record, dict) and isinstance(record.get("kind"), str)
            and all(isinstance(record.get(k), int) for k in ("seen_by", "stage"))
            and isinstance(record.get("time", 0.0), int | float))


def write_root_failure(run_dir: Path) -> dict[str, Any] | None:
    """Resolve the failure and keep it in ``failure.json``."""
    root = root_failure(run_dir)
    if root is not None:
        with contextlib.suppress(OSError):
            atomic_write(run_dir / FAILURE_FILE, (json.dumps(root) + "\n").encode())
    return root
