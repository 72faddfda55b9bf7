"""Training on this machine, for the CLI and the estimator alike: in this process, or on local
processes through the launcher (``launch.py``), or continuing a run from its checkpoint.

The library half of ``pipedbn train``: nothing here parses arguments, and nothing in the
library imports ``cli``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipedbn.balancer import Plan
from pipedbn.balancer.runtime import first_plan
from pipedbn.config import Config
from pipedbn.errors import Interrupted, UserError, resume_command
from pipedbn.observe.monitor import Metrics, tensorboard_on
from pipedbn.pipeline.device import gpus, wants_cuda
from pipedbn.pipeline.distributed import check_world
from pipedbn.pipeline.failure import failure_record
from pipedbn.pipeline.trainer import train_in_process
from pipedbn.run.launch import launch_local
from pipedbn.run.resources import data_shape, rank_threads, resolve, usable_cores
from pipedbn.run.resume import resume_run
from pipedbn.run.rundir import discard_run_dir, record_failure, start_run, write_root_failure

if TYPE_CHECKING:
    from pipedbn.data.loader import Data
    from pipedbn.run.checkpoint import Checkpoint

log = logging.getLogger("pipedbn")


def train_local(cfg: Config, nproc: int | None, quiet: bool, resume: Path | None = None,
                announce: bool = True) -> int:
    """Train ``cfg`` on ``nproc`` local processes (1: in this one; None: as ``train.threads``
    and the device decide, ``resources.py``), or continue the run in ``resume``; the exit
    status. With ``announce`` the run directory is the last line of stdout (for scripts); the
    estimator trains without it."""
    cfg, nproc, _ = resolve(cfg, nproc, lambda: data_shape(cfg), resuming=resume is not None)
    if nproc > 1:
        check_world(cfg, nproc, f"--nproc {nproc}")
        if wants_cuda(cfg.train.device) and gpus() < nproc:
            raise UserError(f"--nproc {nproc} with train.device={cfg.train.device}: one GPU per "
                            f"process is needed and {gpus()} are visible")
    ckpt = None
    if resume is not None:
        cfg, data, ckpt = resume_run(cfg, resume)
        run_dir = resume
    else:
        run_dir, data = start_run(cfg)
    if nproc > 1:
        try:  # a plan the world cannot run is reported once, here, before any process starts
            plan, _ = first_plan(cfg, data.features, nproc)
        except UserError:
            if resume is None:
                discard_run_dir(run_dir)
            raise
    log.info("data: %s; %d training and %d held-out samples, %d features",
             data.source.description, len(data.train_rows), len(data.held_rows), data.features)
    log.info("run directory: %s", run_dir)
    if nproc > 1:
        log.info("starting %d local processes; plan%s: %s", nproc,
                 " (modelled costs)" if cfg.balancer.plan == "auto" else "", plan.describe())
        most = max(rank_threads(cfg, k) for k in range(nproc))
        code = launch_local(run_dir, nproc, most, quiet, resume is not None)
        if code == 0 and announce:
            print(run_dir, flush=True)
        return code
    torch.set_num_threads(rank_threads(cfg, 0))
    try:
        with _sigterm_interrupts():
            _train_here(cfg, run_dir, data, ckpt, resume is not None)
    except KeyboardInterrupt as e:  # not a failure: say where the run is and how to go on
        how = str(e) or "SIGINT"
        raise Interrupted(how, run_dir, resume_command(run_dir, 1)) from None
    except BaseException as e:
        record_failure(run_dir, failure_record(e, 0))
        write_root_failure(run_dir)
        raise
    if announce:
        print(run_dir, flush=True)
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops training in this process as Ctrl-C does (the main thread only: Python
    delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def default_nproc(cfg: Config) -> int:
    """Processes to start without a launcher: the ranks an explicit plan names, else one per
    layer."""
    if cfg.balancer.plan == "auto":
        return len(cfg.layers)
    plan = Plan.parse(cfg.balancer.plan, 1 << 16, len(cfg.layers))
    return max(r for st in plan.stages for r in st.ranks) + 1


IN_PROCESS_FLOPS = 1e11
"""Modelled work (FLOPs of the CD steps, ``balancer`` cost model) below which the estimator
trains in its own process: starting processes (seconds each) would cost more than it saves.
The weights are the same either way (DESIGN §2)."""


def machine_nproc(cfg: Config, samples: int, features: int) -> int:
    """Processes for the devices present: one per GPU, else one per core; never more than the
    layers unless replicas are allowed (the balancer would leave the rest idle); one (this
    process) for a problem under ``IN_PROCESS_FLOPS`` on the default plan."""
    devices = gpus() if wants_cuda(cfg.train.device) else usable_cores()
    if cfg.balancer.plan != "auto":
        return default_nproc(cfg)
    sizes = [features] + cfg.sizes
    work = sum((6 + 4 * layer.k) * sizes[i] * sizes[i + 1] * layer.epochs * samples
               for i, layer in enumerate(cfg.layers))
    if cfg.balancer.max_replicas == 1:
        return 1 if work < IN_PROCESS_FLOPS else max(1, min(devices, len(cfg.layers)))
    return max(1, devices)


def _train_here(cfg: Config, run_dir: Path, data: Data, ckpt: Checkpoint | None,
                resumed: bool) -> None:
    # a resumed run's TensorBoard drops what the interrupted attempt wrote from ckpt on
    purge = (ckpt.micro_batch if ckpt is not None else 0) if resumed else None
    metrics = Metrics(run_dir, tensorboard=tensorboard_on(cfg), purge_step=purge)
    try:
        train_in_process(cfg, data, metrics, run_dir, ckpt)  # exports and summarises
    finally:
        metrics.close()
