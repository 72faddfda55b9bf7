"""Resuming a run: by hand (``pipedbn train CONFIG --resume RUN_DIR``) or when torchrun restarts
its workers (``--max-restarts``).

``resume_run`` checks that the config may continue the run (the training fields must be equal;
placement, monitoring and timeouts may change), finds the newest complete checkpoint and
verifies its checksums, then makes the run directory ready for the resumed stream: step
directories past the checkpoint are removed (they are torn or will be written again), records
of ``metrics.jsonl`` from the checkpoint on are dropped (TensorBoard's are purged by the
writers, ``purge_step``), the failure records of the previous attempt are cleared, and the
config is written again (the plan or world size may differ).

Under torchrun, a run directory remembers the rendezvous run id that created it
(``launcher.json``; without ``run.dir`` a pointer file under ``run.out/run.name`` finds the
timestamped directory). A worker that finds its own run id there resumes: this covers restarts
(``TORCHELASTIC_RESTART_COUNT > 0``) and a replacement agent for a lost node, whose workers
count their restarts from 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from pipedbn.config import Config, load_config, resolve_defaults
from pipedbn.data.loader import Data
from pipedbn.data.prepare import run_data
from pipedbn.errors import ConfigError, RunDirError
from pipedbn.observe.monitor import METRICS_FILE
from pipedbn.pipeline.layers import make_schedule
from pipedbn.run.checkpoint import (
    CHECKPOINTS,
    FINAL,
    Checkpoint,
    discard_after,
    incompatible,
    latest,
)
from pipedbn.run.rundir import (
    FAILURE_FILE,
    FAILURES_DIR,
    atomic_write,
    discard_run_dir,
    keep_manifest,
    root_failure,
    write_config,
)

log = logging.getLogger("pipedbn")

LAUNCHER_FILE = "launcher.json"


def elastic_run_id() -> str | None:
    return os.environ.get("TORCHELASTIC_RUN_ID")


def _pointer(cfg: Config, run_id: str) -> Path:
    return Path(cfg.run.out) / cfg.run.name / f".torchelastic-{run_id}"


def torchrun_resume_dir(cfg: Config) -> Path | None:
    """The run directory this torchrun job created before a restart, if any. A claim that was
    cut short (the kill came while it was being filled in place, on a mount point) is
    emptied, and ``cfg.run.dir`` names it so that the run starts there again."""
    run_id = elastic_run_id()
    if run_id is None:
        return None
    if cfg.run.dir:
        path = Path(cfg.run.dir)
    else:
        try:
            path = Path(_pointer(cfg, run_id).read_text().strip())
        except OSError:
            return None
    if _marked_by(path) != run_id:
        if not cfg.run.dir and path.is_dir() and not any(path.iterdir()):
            cfg.run.dir = str(path)  # reserved before the kill, not yet filled: fill it now
        return None
    if (path / "config.yaml").is_file():  # written last: the claim is whole
        return path
    log.info("the previous attempt was stopped while creating %s: starting it again", path)
    discard_run_dir(path)
    cfg.run.dir = str(path)
    return None


def _marked_by(path: Path) -> str | None:
    try:
        return str(json.loads((path / LAUNCHER_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def launcher_marks() -> dict[str, bytes]:
    """The files by which a torchrun job recognises the run directory it created (its
    restarts, and a replacement agent's workers): none outside torchrun."""
    run_id = elastic_run_id()
    return {} if run_id is None else {
        LAUNCHER_FILE: (json.dumps({"run_id": run_id}) + "\n").encode()}


def write_pointer(cfg: Config, run_dir: Path) -> None:
    """Point this torchrun job's restarts at the timestamped ``run_dir`` it has just reserved
    (before it is filled: ``torchrun_resume_dir`` then fills it)."""
    run_id = elastic_run_id()
    if run_id is not None and not cfg.run.dir:
        atomic_write(_pointer(cfg, run_id), f"{run_dir}\n".encode())


def resume_run(cfg: Config, run_dir: Path) -> tuple[Config, Data, Checkpoint | None]:
    """Check ``cfg`` against the run in ``run_dir`` and prepare the directory to resume from
    its newest complete checkpoint (None: from the start). Returns the config to run with."""
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"--resume {run_dir}: not a run directory (no config.yaml); give the "
                          "directory a run printed as its last line")
    try:
        old = resolve_defaults(load_config(run_dir / "config.yaml"))
    except ConfigError as e:
        raise RunDirError(f"--resume {run_dir}: its config.yaml cannot be read:\n{e}") from None
    diffs = incompatible(old, cfg)
    if diffs:
        raise ConfigError(diffs + [f"resume with the run's own config: pipedbn train "
                                   f"{run_dir / 'config.yaml'} --resume {run_dir}"],
                          source=f"--resume {run_dir}: the config differs from the run's in "
                                 "fields that decide the weights")
    data = run_data(cfg, run_dir, values=True)
    keep_manifest(run_dir, data)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    layers = len(cfg.layers)
    ckpt = latest(run_dir, cfg, layers, schedule.length)
    c = ckpt.micro_batch if ckpt is not None else 0
    previous = root_failure(run_dir)
    if previous is not None:
        log.info("the previous attempt stopped: rank %s: %s", previous.get("stage"),
                 previous.get("message"))
    log.info("resuming %s from %s", run_dir,
             f"{ckpt.tag} (micro-batch {c} of {schedule.length})" if ckpt is not None
             else "the start (no complete checkpoint)")
    discard_after(run_dir, c)
    if ckpt is None or ckpt.tag != FINAL:
        shutil.rmtree(run_dir / CHECKPOINTS / FINAL, ignore_errors=True)
    _trim_metrics(run_dir / METRICS_FILE, c)
    shutil.rmtree(run_dir / FAILURES_DIR, ignore_errors=True)
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)
    cfg.run.dir = str(run_dir)
    write_config(run_dir, cfg)
    return cfg, data, ckpt


def _trim_metrics(path: Path, c: int) -> None:
    """Keep the records of steps before ``c`` (none when the stream starts over)."""
    try:
        # bytes that are not UTF-8 (an edited or damaged file) make lines dropped below
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return
    keep = []
    for line in lines:
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the kill
        if c > 0 and isinstance(step, int | float) and step < c:
            keep.append(line + "\n")
    atomic_write(path, "".join(keep).encode())
