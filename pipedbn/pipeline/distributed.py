"""A distributed run seen from one rank, under ``torchrun`` or the local launcher (``launch.py``).

1. Join the process group (``group.py``): gloo on CPU; NCCL on CUDA, one GPU per rank from
   ``LOCAL_RANK`` (``device.py``).
2. Rank 0 prepares the run (data checks, run directory) and sends every rank the resolved config
   and the stream's shape (``setup.py``); the other ranks never open the data.
3. Every rank runs its stage of each plan (``worker.py``), the same loop as a run in one process.
4. Rank 0 gathers every stage's timings, evaluates, exports the model and prints the summary
   (``finish.py``).

On an error a rank records it in the run directory's ``failures/`` (its own error, or the peer it
lost and how), leaves the process group and exits non-zero; ``rundir.root_failure`` works out
from the records which stage failed first (``failure.py``). Every wait on another rank is
bounded by a timeout, except an idle rank's wait for the end of a segment: the launcher stops it
if the run fails.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch.distributed as dist

from pipedbn.balancer import Plan
from pipedbn.balancer.runtime import store
from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.errors import ConfigError, Reported, RunDirError, UserError
from pipedbn.observe.monitor import Metrics, tensorboard_on
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.context import RankContext
from pipedbn.pipeline.device import placement
from pipedbn.pipeline.failure import (
    exit_with_parent,
    failure_record,
    no_restart,
    recurs,
    thread_error,
)
from pipedbn.pipeline.finish import Closing, close_run
from pipedbn.pipeline.group import join_group
from pipedbn.pipeline.layers import dtype_of, make_schedule
from pipedbn.pipeline.rank import RankRun
from pipedbn.pipeline.runner import StageStats
from pipedbn.pipeline.setup import Setup, set_up
from pipedbn.pipeline.transport import LinkError
from pipedbn.pipeline.worker import open_rank0, train
from pipedbn.run.launch import LINK_EXIT
from pipedbn.run.rundir import record_failure, storage_problem, write_root_failure


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun or the elastic launcher."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", "0")))


def check_world(cfg: Config, world: int, how: str) -> None:
    """Whether ``world`` processes can run this config's plan (an explicit plan names its
    ranks; the planner fits any world, within ``balancer.memory_mb``)."""
    if cfg.balancer.plan == "auto":
        return
    try:
        Plan.parse(cfg.balancer.plan, world, len(cfg.layers))
    except ValueError as e:
        raise ConfigError([f"balancer.plan: {e} ({how} starts {world} processes; start as "
                           "many as the plan uses, or set balancer.plan=auto)"]) from None


def train_distributed(cfg: Config, prepared: bool, resume: Path | None = None) -> int:
    """This rank's part of a distributed run (continuing the run in ``resume``, or the one
    this torchrun job started before a restart); returns the exit status."""
    env = torchrun_env()
    assert env is not None
    rank, world, local_rank = env
    check_world(cfg, world, "the launcher")
    where = placement(cfg.train.device, cfg.pipeline.backend, local_rank)
    exit_with_parent()
    threading.excepthook = thread_error
    join_group(where.backend, rank, world, cfg.pipeline.connect_timeout,
               cfg.pipeline.setup_timeout)
    run_dir: Path | None = None
    try:
        setup, data = set_up(cfg, rank, world, prepared, where.device, resume)
        run_dir = setup.run_dir
        cfg = setup.config
        ctx = RankContext(rank, world, where.device, dtype_of(cfg), cfg.pipeline.timeout,
                          cfg.pipeline.setup_timeout)
        _run(cfg, ctx, setup, data)
        if rank == 0 and not prepared:  # under our own launcher, it says where the run is
            print(run_dir, flush=True)
    except BaseException as e:
        problem = storage_problem(run_dir, e) if isinstance(e, OSError) and run_dir else None
        if problem is not None:  # the storage's fault: one line naming it, no traceback
            e = RunDirError(problem)
        if run_dir is not None and not isinstance(e, KeyboardInterrupt):  # not a failure
            record_failure(run_dir, failure_record(e, rank))
        if recurs(e, run_dir):
            no_restart()
            if run_dir is not None and not prepared and isinstance(e, UserError):
                write_root_failure(run_dir)  # (torchrun: no launcher of ours marks the run)
        if problem is not None:
            raise e from None
        if _reported_elsewhere(e, run_dir, prepared):
            code = e.exit_code if isinstance(e, UserError) else LINK_EXIT
            raise Reported(code) from None
        raise
    finally:
        dist.destroy_process_group()
    return 0


def _reported_elsewhere(e: BaseException, run_dir: Path | None, prepared: bool) -> bool:
    """Whether another process says this rank's failure: a user's mistake (bad data met in
    the stream, say) under the local launcher, which reports the record; a link lost because
    a neighbour stopped on such a mistake, which that neighbour (or the launcher) reports."""
    if run_dir is None:
        return False
    if prepared and isinstance(e, UserError):
        return True
    return isinstance(e, LinkError) and recurs(e, run_dir)


def _run(cfg: Config, ctx: RankContext, setup: Setup, data: Data | None) -> None:
    """Train this rank's part; rank 0 then closes the run (``finish.close_run``)."""
    assert setup.run_dir is not None
    schedule = make_schedule(cfg, setup.batches)
    # a resumed run's TensorBoard drops what the interrupted attempt wrote from start_at on
    metrics = Metrics(setup.run_dir, stage=ctx.rank, tensorboard=tensorboard_on(cfg),
                      purge_step=setup.start_at if setup.resumed else None)
    kv = store(setup.attempt)
    progress = Progress(cfg, schedule, kv, ctx.rank, ctx.world)
    run = RankRun(cfg, ctx, setup, schedule, metrics, progress, StageStats(ctx.rank, None, []),
                  kv, data)
    try:
        opening = open_rank0(run) if ctx.rank == 0 else None
        t0 = time.perf_counter()
        train(run)
    finally:
        progress.close()
        metrics.close()
    gathered: list[object] | None = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(run.stats, gathered, dst=0)  # every owner has saved its layers
    if opening is None:
        return
    assert gathered is not None and data is not None
    opening.t0 = t0
    stages = [s for s in gathered if isinstance(s, StageStats)]
    metrics = Metrics(setup.run_dir, stage=0, tensorboard=tensorboard_on(cfg))
    try:
        close_run(cfg, data, opening, Closing(stages, None, setup.run_dir), metrics)
    finally:
        metrics.close()
