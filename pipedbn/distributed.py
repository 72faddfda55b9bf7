"""A distributed run seen from one rank, under ``torchrun`` or the local launcher (``launch.py``).

1. Join the process group: gloo on CPU; NCCL on CUDA, one GPU per rank from ``LOCAL_RANK``.
2. Rank 0 prepares the run (data checks, run directory) and sends every rank the resolved config
   and the stream's shape; the other ranks never open the data.
3. Rank r runs stage r (``runner.py``), which owns layer r, and saves that layer's final state.
4. Rank 0 gathers every stage's timings, evaluates, exports the model and prints the summary.

On an error a rank records it in the run directory's ``failures/`` (its own error, or the peer it
lost and how), leaves the process group and exits non-zero; ``rundir.root_failure`` works out
from the records which stage failed first. Every wait on another rank is bounded by a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from pipedbn.config import Config
from pipedbn.data import Data, Prefetcher
from pipedbn.errors import ConfigError, UserError
from pipedbn.rbm import RBM
from pipedbn.rundir import (
    Metrics,
    atomic_write,
    layer_state_path,
    record_failure,
    save_tensors,
    start_run,
)
from pipedbn.runner import StageStats, run_stage
from pipedbn.trainer import (
    Result,
    dtype_of,
    finish_run,
    make_layer,
    make_layers,
    make_schedule,
    monitor_data,
    record_eval,
    summary,
)
from pipedbn.transport import LinkError, Receiver, Sender

log = logging.getLogger("pipedbn")

STAGES_FILE = "stages.json"


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun or the elastic launcher."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", "0")))


def check_world(cfg: Config, world: int, how: str) -> None:
    layers = len(cfg.layers)
    if world != layers:
        raise ConfigError([f"{how} starts {world} processes, but a pipeline runs one per layer "
                           f"and this config has {layers}: start {layers}, or train in one "
                           "process with --nproc 1"])


def wants_cuda(cfg: Config) -> bool:
    return cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available())


def stage_device(cfg: Config, local_rank: int) -> tuple[torch.device, str]:
    """This rank's device and the process group backend."""
    want_cuda = wants_cuda(cfg)
    backend = cfg.pipeline.backend
    if backend == "auto":
        backend = "nccl" if want_cuda else "gloo"
    if not want_cuda:
        if backend == "nccl":
            raise UserError("pipeline.backend: nccl needs train.device=cuda")
        return torch.device("cpu"), backend
    if backend == "gloo":
        raise UserError("pipeline.backend: gloo cannot send CUDA tensors between stages; use "
                        "nccl (or auto) with train.device=cuda")
    if local_rank >= torch.cuda.device_count():
        # only some ranks get here: a plain UserError, which every rank prints
        raise UserError(f"train.device: {cfg.train.device}, but local rank {local_rank} has no "
                        f"GPU of its own ({torch.cuda.device_count()} visible): start at most "
                        "one process per GPU on each node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank), backend


def train_distributed(cfg: Config, prepared: bool) -> int:
    """This rank's part of a distributed run; returns the exit status."""
    env = torchrun_env()
    assert env is not None
    rank, world, local_rank = env
    check_world(cfg, world, "the launcher")
    device, backend = stage_device(cfg, local_rank)
    _exit_with_parent()
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.pipeline.setup_timeout))
    run_dir: Path | None = None
    try:
        cfg, run_dir, data, features, batches = _setup(cfg, rank, prepared)
        stats, layers, result, monitor = _train(cfg, rank, world, run_dir, data, features,
                                                batches, device)
        _finish(cfg, rank, world, run_dir, data, stats, layers, result, monitor, device)
    except BaseException as e:
        if run_dir is not None:
            record_failure(run_dir, failure_record(e, rank))
        raise
    finally:
        dist.destroy_process_group()
    return 0


def _exit_with_parent() -> None:
    """End this worker if its launcher dies (SIGKILL, OOM): the elastic agent starts workers
    in their own sessions, so nothing else would stop them."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="pipedbn-parent-watch").start()


def failure_record(e: BaseException, rank: int) -> dict[str, object]:
    if isinstance(e, LinkError):
        return {"stage": e.peer, "seen_by": rank, "exit_code": 4,
                "kind": "timeout" if e.timed_out else "closed",
                "message": f"stage {e.peer} stopped answering ({e})", "time": time.time()}
    code = e.exit_code if isinstance(e, UserError) else 1
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return {"stage": rank, "seen_by": rank, "exit_code": code, "kind": "own", "message": text,
            "time": time.time()}


def graded_timeouts(timeout: float, rank: int, world: int) -> tuple[float, float]:
    """(send, receive) timeouts of a stage. When a stage hangs, the stages below it block on
    their sends (back-pressure) and the stages above it starve; each of them would blame its own
    neighbour. Waits grow by a quarter of the timeout per hop away from the hang's neighbours
    (sends towards stage 0, receives towards the last stage), so the hung stage's own neighbours
    give up first and name it in ``failure.json``."""
    send_hops = max(0, world - 2 - rank)
    recv_hops = max(0, rank - 1)
    return timeout * (1 + send_hops / 4), timeout * (1 + recv_hops / 4)


class SetupFailed(UserError):
    """Rank 0 could not prepare the run; it reports why, the other ranks just stop."""


def _setup(cfg: Config, rank: int, prepared: bool
           ) -> tuple[Config, Path, Data | None, int, int]:
    box: list[object] = [None]
    data = None
    if rank == 0:
        try:
            run_dir, data = start_run(cfg, prepared)
        except UserError as e:
            dist.broadcast_object_list([{"error": str(e)}], src=0)
            raise
        log.info("data: %s; %d training and %d held-out samples, %d features",
                 data.source.description, len(data.train_rows), len(data.held_rows),
                 data.features)
        log.info("run directory: %s", run_dir)
        box = [{"config": cfg, "run_dir": str(run_dir), "features": data.features,
                "batches": data.batches_per_epoch}]
    dist.broadcast_object_list(box, src=0)
    msg = box[0]
    assert isinstance(msg, dict)
    if "error" in msg:
        raise SetupFailed(f"stage 0 could not prepare the run: {msg['error']}")
    run_dir = Path(msg["run_dir"])
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"stage {rank} on {os.uname().nodename}: the run directory {run_dir} "
                        "is not visible here; runs on several nodes need run.out on a "
                        "filesystem that every node shares")
    return msg["config"], run_dir, data, msg["features"], msg["batches"]


def _train(cfg: Config, rank: int, world: int, run_dir: Path, data: Data | None,
           features: int, batches: int, device: torch.device
           ) -> tuple[StageStats, list[RBM], Result | None, _Monitor | None]:
    schedule = make_schedule(cfg, batches)
    dtype = dtype_of(cfg)
    sizes = [features] + cfg.sizes
    pl = cfg.pipeline
    name = f"stage {rank}"
    send_timeout, recv_timeout = graded_timeouts(pl.timeout, rank, world)
    metrics = Metrics(run_dir, stage=rank)
    result, monitor = None, None
    try:
        sender = (Sender(rank + 1, cfg.train.batch_size, sizes[rank + 1], dtype, device,
                         pl.window, send_timeout, name, beat_every=pl.timeout / 4)
                  if rank + 1 < world else None)
        if rank == 0:
            assert data is not None
            log.info("%s", schedule.describe())
            everything = make_layers(cfg, data, schedule, device)
            held, ref = monitor_data(data, device, dtype)
            start = record_eval(everything, held, ref, metrics, 0)
            layers = everything[:1]
            result = Result(everything, start, [], 0.0, 0)
            monitor = _Monitor(held, ref, schedule.length)
            positions = [(m, *schedule.data_position(m)) for m in schedule.micro_batches(0)]
            source: Prefetcher | Receiver = Prefetcher(data, positions, cfg.data.prefetch, dtype,
                                                       timeout=pl.setup_timeout)
        else:
            layers = [make_layer(cfg, rank, features, schedule, device)]
            source = Receiver(rank - 1, cfg.train.batch_size, sizes[rank], dtype, device,
                              recv_timeout, name, first_timeout=pl.setup_timeout,
                              on_beat=sender.beat_if_quiet if sender is not None else None)
        t0 = time.perf_counter()
        try:
            stats = run_stage(cfg, rank, layers, schedule, source, sender, metrics, device)
        finally:
            if isinstance(source, Prefetcher):
                source.close()
        for layer in layers:
            save_tensors(layer_state_path(run_dir, layer.index), layer.state_dict())
        if result is not None:
            result.samples = stats.samples
            result.seconds = time.perf_counter() - t0  # completed in _finish
    finally:
        metrics.close()
    return stats, layers, result, monitor


@dataclass
class _Monitor:
    """Rank 0's held-out and reference samples, read once for both evaluations."""

    held: torch.Tensor
    ref: torch.Tensor
    length: int


def _finish(cfg: Config, rank: int, world: int, run_dir: Path, data: Data | None,
            stats: StageStats, layers: list[RBM], result: Result | None,
            monitor: _Monitor | None, device: torch.device) -> None:
    t0 = time.perf_counter()
    gathered: list[object] | None = [None] * world if rank == 0 else None
    dist.gather_object(stats.as_dict(), gathered, dst=0)  # every stage has saved its layers
    if rank != 0:
        return
    assert data is not None and result is not None and monitor is not None
    assert gathered is not None
    result.seconds += time.perf_counter() - t0  # until the last stage is done
    for i, layer in enumerate(result.layers):
        if i >= len(layers):
            state = torch.load(layer_state_path(run_dir, i), map_location=device,
                               weights_only=True)
            layer.load_state_dict(state)
    metrics = Metrics(run_dir, stage=0)
    result.end = record_eval(result.layers, monitor.held, monitor.ref, metrics, monitor.length)
    metrics.scalar(monitor.length, 0, "throughput/end_to_end_samples_per_s",
                   result.samples / result.seconds)
    metrics.close()
    atomic_write(run_dir / STAGES_FILE, (json.dumps(gathered, indent=1) + "\n").encode())
    finish_run(run_dir, summary(cfg, data, result) + "\n" + stage_table(gathered))


def stage_table(stages: list[object]) -> str:
    lines = [f"{'stage':>5} {'layers':>6} {'batches':>8} {'busy':>6} {'compute s':>10} "
             f"{'recv wait s':>11} {'send wait s':>11} {'samples/s':>10} {'in flight':>9}"]
    for s in stages:
        assert isinstance(s, dict)
        lines.append(
            f"{s['stage']:>5} {','.join(map(str, s['layers'])):>6} {s['micro_batches']:>8} "
            f"{s['busy_frac']:>6.1%} {s['compute_s']:>10.2f} {s['recv_wait_s']:>11.2f} "
            f"{s['send_wait_s']:>11.2f} {s['samples_per_s']:>10.0f} {s['max_in_flight']:>9}")
    return "\n".join(lines)
