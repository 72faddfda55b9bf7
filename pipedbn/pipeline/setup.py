"""Setting a run up: rank 0 prepares (or resumes) the run and chooses the first plan; every rank
gets what it needs to start (``Setup``) from rank 0, and the other ranks never open the data."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipedbn.balancer import Plan, Problem
from pipedbn.balancer.plan import Stage as PlanStage
from pipedbn.balancer.probe import probe_links
from pipedbn.balancer.runtime import first_plan, profile_layers
from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.errors import UserError
from pipedbn.pipeline.collectives import node_ids
from pipedbn.pipeline.layers import make_schedule
from pipedbn.run.checkpoint import Checkpoint, latest
from pipedbn.run.resume import (
    elastic_run_id,
    launcher_marks,
    resume_run,
    torchrun_resume_dir,
    write_pointer,
)
from pipedbn.run.rundir import discard_run_dir, start_run, write_config

log = logging.getLogger("pipedbn")


@dataclass
class Setup:
    """What every rank starts from."""

    config: Config
    run_dir: Path | None
    features: int
    batches: int
    """Micro-batches per epoch."""
    feature_mean: list[float]
    """The data mean (layer 0's visible biases start from it)."""
    checkpoint: Checkpoint | None
    resumed: bool
    attempt: str
    """This attempt's namespace in the process group's store."""
    plan: Plan | None = None
    problem: Problem | None = None

    @property
    def start_at(self) -> int:
        return self.checkpoint.micro_batch if self.checkpoint is not None else 0

    def mean(self) -> np.ndarray:
        return np.asarray(self.feature_mean, dtype=np.float32)

    @classmethod
    def of(cls, cfg: Config, run_dir: Path | None, data: Data, ckpt: Checkpoint | None,
           resumed: bool) -> Setup:
        return cls(cfg, run_dir, data.features, data.batches_per_epoch,
                   data.feature_mean.tolist(), ckpt, resumed, uuid.uuid4().hex[:12])

    @classmethod
    def in_process(cls, cfg: Config, run_dir: Path | None, data: Data,
                   ckpt: Checkpoint | None) -> Setup:
        """A run in this process: one stage of every layer (``Schedule`` order of operations)."""
        setup = cls.of(cfg, run_dir, data, ckpt, ckpt is not None)
        setup.plan = Plan((PlanStage(tuple(range(len(cfg.layers))), (0,)),), 1)
        return setup


@dataclass
class _Refusal:
    """Rank 0 could not prepare or plan the run: why (the other ranks just stop)."""

    message: str


class SetupFailed(UserError):
    """Rank 0 could not prepare the run; it reports why, the other ranks just stop."""


def set_up(cfg: Config, rank: int, world: int, prepared: bool, device: torch.device,
           resume: Path | None) -> tuple[Setup, Data | None]:
    """Rank 0 prepares (or resumes) the run and chooses the first plan; every rank gets the
    config, the run directory, the stream's shape, the checkpoint to start from and the plan
    (and rank 0 the data)."""
    box: list[object] = [None]
    data = None
    if rank == 0:
        try:
            setup, data = _prepare(cfg, prepared, resume)
        except UserError as e:
            dist.broadcast_object_list([_Refusal(str(e))], src=0)
            raise
        box = [setup]
    dist.broadcast_object_list(box, src=0)
    got = box[0]
    if isinstance(got, _Refusal):
        raise SetupFailed(f"stage 0 could not prepare the run: {got.message}")
    assert isinstance(got, Setup) and got.run_dir is not None
    setup, run_dir, cfg = got, got.run_dir, got.config
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"rank {rank} on {os.uname().nodename}: the run directory {run_dir} "
                        "is not visible here; runs on several nodes need run.out on a "
                        "filesystem that every node shares")
    profile: list[object] | None = None
    if cfg.balancer.plan == "auto" and cfg.balancer.costs == "profile":
        profile = [None] * world
        dist.all_gather_object(profile, profile_layers(cfg, setup.features, device))
        if cfg.balancer.links == "probe" and world > 1:
            cfg = _probe(cfg, rank, run_dir, device)
            setup.config = cfg
    planned: list[object] = [None]
    if rank == 0:
        try:
            planned = [first_plan(cfg, setup.features, world, profile)]  # type: ignore[arg-type]
        except UserError as e:
            planned = [_Refusal(str(e))]
    dist.broadcast_object_list(planned, src=0)
    if isinstance(planned[0], _Refusal):
        if rank == 0:
            if not prepared and not setup.resumed:  # never started: leave nothing behind
                discard_run_dir(run_dir)
            raise UserError(planned[0].message)
        raise SetupFailed(f"stage 0 could not plan the run: {planned[0].message}")
    setup.plan, setup.problem = planned[0]  # type: ignore[misc]
    if data is not None:
        log.info("data: %s; %d training and %d held-out samples, %d features",
                 data.source.description, len(data.train_rows), len(data.held_rows),
                 data.features)
        log.info("run directory: %s", run_dir)
    return setup, data


def _probe(cfg: Config, rank: int, run_dir: Path, device: torch.device) -> Config:
    """``cfg`` with the links' measured figures (``balancer.probe``), every rank's the same;
    rank 0 logs them and writes them into the run's ``config.yaml``, which then reproduces the
    figures (as ``train.threads: auto`` is resolved there)."""
    links = probe_links(node_ids(), device, cfg.pipeline.timeout)
    if links.intra is None and links.inter is None:
        return cfg
    cfg = links.into(cfg)
    if rank == 0:
        log.info("%s", links.describe())
        write_config(run_dir, cfg)
    return cfg


def _prepare(cfg: Config, prepared: bool, resume: Path | None) -> tuple[Setup, Data]:
    """Rank 0: the run directory (new, or the one to resume) and the data."""
    ckpt = None
    resume = resume or torchrun_resume_dir(cfg)
    if resume is not None and prepared:
        # the local launcher has checked and tidied the run (resume_run) already; each rank
        # verifies the checksums of the parts it loads
        run_dir, data = start_run(cfg, prepared)
        ckpt = latest(run_dir, cfg, len(cfg.layers),
                      make_schedule(cfg, data.batches_per_epoch).length, verify=False)
    elif resume is not None:
        cfg, data, ckpt = resume_run(cfg, resume)
        run_dir = resume
    elif prepared:
        run_dir, data = start_run(cfg, prepared)
    else:  # the run directory is whole, marked as this job's, or not there at all
        run_dir, data = start_run(cfg, marks=launcher_marks(), token=elastic_run_id(),
                                  on_claim=lambda path: write_pointer(cfg, path))
    return Setup.of(cfg, run_dir, data, ckpt, resume is not None), data
