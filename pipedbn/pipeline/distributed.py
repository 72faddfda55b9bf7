"""A distributed run seen from one rank, under ``torchrun`` or the local launcher (``launch.py``).

1. Join the process group: gloo on CPU; NCCL on CUDA, one GPU per rank from ``LOCAL_RANK``.
2. Rank 0 prepares the run (data checks, run directory) and sends every rank the resolved config
   and the stream's shape; the other ranks never open the data.
3. Rank 0 chooses the first plan (``balance.py``); each rank runs its stage and replica of it
   (``runner.py``), segment after segment when the balancer re-plans (the layers' state moving
   between ranks), or waits idle; each layer's final owner saves its state.
4. Rank 0 gathers every stage's timings, evaluates, exports the model and prints the summary.

On an error a rank records it in the run directory's ``failures/`` (its own error, or the peer it
lost and how), leaves the process group and exits non-zero; ``rundir.root_failure`` works out
from the records which stage failed first. Every wait on another rank is bounded by a timeout,
except an idle rank's wait for the end of a segment: the launcher stops it if the run fails.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipedbn.balancer import Plan, Problem
from pipedbn.balancer.runtime import (
    Coordinator,
    Reporter,
    first_plan,
    get,
    get_forever,
    profile_layers,
    put,
    store,
)
from pipedbn.config import Config, dump_yaml
from pipedbn.data.loader import Data, Prefetcher
from pipedbn.data.prepare import run_data
from pipedbn.errors import ConfigError, RunDirError, UserError
from pipedbn.model.rbm import RBM
from pipedbn.observe.monitor import Metrics, tensorboard_on
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.group import join_group
from pipedbn.pipeline.links import Inbox, Outbox
from pipedbn.pipeline.replicas import ReplicaSync, round_boundaries, start_replica
from pipedbn.pipeline.runner import Role, StageStats, run_stage
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.trainer import (
    Result,
    dtype_of,
    evaluate,
    finish_run,
    make_layer,
    make_layers,
    make_schedule,
    monitor_data,
    probe_data,
    record_end,
    record_eval,
    summary,
)
from pipedbn.pipeline.transport import END, LinkError
from pipedbn.run.checkpoint import Checkpoint, Saver, boundaries, finalize, latest
from pipedbn.run.resume import (
    elastic_run_id,
    launcher_marks,
    resume_run,
    torchrun_resume_dir,
    write_pointer,
)
from pipedbn.run.rundir import (
    atomic_write,
    discard_run_dir,
    layer_state_path,
    record_failure,
    root_failure,
    start_run,
    storage_problem,
)

log = logging.getLogger("pipedbn")

STAGES_FILE = "stages.json"


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


def train_distributed(cfg: Config, prepared: bool, resume: Path | None = None) -> int:
    """This rank's part of a distributed run (continuing the run in ``resume``, or the one
    this torchrun job started before a restart); returns the exit status."""
    env = torchrun_env()
    assert env is not None
    rank, world, local_rank = env
    check_world(cfg, world, "the launcher")
    device, backend = stage_device(cfg, local_rank)
    _exit_with_parent()
    threading.excepthook = _thread_error
    join_group(backend, rank, world, cfg.pipeline.connect_timeout, cfg.pipeline.setup_timeout)
    run_dir: Path | None = None
    try:
        cfg, run_dir, data, setup = _setup(cfg, rank, world, prepared, device, resume)
        stats, result, monitor = _train(cfg, rank, world, run_dir, data, setup, device)
        _finish(cfg, rank, world, run_dir, data, stats, result, monitor, device)
        if rank == 0 and not prepared:  # under our own launcher, it says where the run is
            print(run_dir, flush=True)
    except BaseException as e:
        problem = storage_problem(run_dir, e) if isinstance(e, OSError) and run_dir else None
        if problem is not None:  # the storage's fault: one line naming it, no traceback
            e = RunDirError(problem)
        if run_dir is not None and not isinstance(e, KeyboardInterrupt):  # not a failure
            record_failure(run_dir, failure_record(e, rank))
        if _recurs(e, run_dir):
            _no_restart()
        if problem is not None:
            raise e from None
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


def _thread_error(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's) that cannot write any more: one line, not a
    traceback; the stage's own next write fails and names the storage (``storage_problem``)."""
    if isinstance(args.exc_value, OSError):
        name = args.thread.name if args.thread is not None else "?"
        log.warning("background thread %s stopped: %s", name, args.exc_value)
        return
    threading.__excepthook__(args)


def _recurs(e: BaseException, run_dir: Path | None) -> bool:
    """Whether this failure would happen again after a restart: a user's mistake (bad data
    found mid-stream, say) or a divergence, here or on the stage that failed first (training
    is deterministic, so both recur)."""
    if isinstance(e, UserError):
        return e.exit_code in (2, 3)
    if isinstance(e, LinkError) and run_dir is not None:
        root = root_failure(run_dir)
        return root is not None and root.get("kind") == "own" and root.get("exit_code") in (2, 3)
    return False


def _no_restart() -> None:
    """Ask torchrun's agent (this worker's parent) to stop rather than restart the workers
    into the same error: restarts are for lost processes and nodes."""
    left = (int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
            - int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    if left > 0 and "TORCHELASTIC_RUN_ID" in os.environ:
        import atexit

        log.error("this error recurs on every restart: asking torchrun to stop (%d restarts "
                  "left unused)", left)
        parent = os.getppid()
        atexit.register(os.kill, parent, signal.SIGTERM)  # once the error has been printed


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


def _setup(cfg: Config, rank: int, world: int, prepared: bool, device: torch.device,
           resume: Path | None) -> tuple[Config, Path, Data | None, dict[str, Any]]:
    """Rank 0 prepares (or resumes) the run and chooses the first plan; every rank gets the
    config, the run directory, the stream's shape, the checkpoint to start from and the plan."""
    box: list[object] = [None]
    data = None
    if rank == 0:
        try:
            ckpt = None
            resume = resume or torchrun_resume_dir(cfg)
            if resume is not None and prepared:
                # the local launcher has checked and tidied the run (resume_run) already; each
                # rank verifies the checksums of the parts it loads
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
        except UserError as e:
            dist.broadcast_object_list([{"error": str(e)}], src=0)
            raise
        box = [{"config": cfg, "run_dir": str(run_dir), "features": data.features,
                "batches": data.batches_per_epoch,
                "feature_mean": data.feature_mean.tolist(), "checkpoint": ckpt,
                "resumed": resume is not None, "attempt": uuid.uuid4().hex[:12]}]
    dist.broadcast_object_list(box, src=0)
    msg = box[0]
    assert isinstance(msg, dict)
    if "error" in msg:
        raise SetupFailed(f"stage 0 could not prepare the run: {msg['error']}")
    run_dir = Path(msg["run_dir"])
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"rank {rank} on {os.uname().nodename}: the run directory {run_dir} "
                        "is not visible here; runs on several nodes need run.out on a "
                        "filesystem that every node shares")
    cfg = msg["config"]
    profile: list[object] | None = None
    if cfg.balancer.plan == "auto" and cfg.balancer.costs == "profile":
        profile = [None] * world
        dist.all_gather_object(profile, profile_layers(cfg, msg["features"], device))
    box = [None]
    if rank == 0:
        try:
            plan, problem = first_plan(cfg, msg["features"], world, profile)  # type: ignore
            box = [{"plan": plan.to_dict(), "problem": problem}]
        except UserError as e:
            box = [{"error": str(e)}]
    dist.broadcast_object_list(box, src=0)
    planned = box[0]
    assert isinstance(planned, dict)
    if "error" in planned:
        if rank == 0:
            if not prepared and not msg["resumed"]:  # never started: leave nothing behind
                discard_run_dir(run_dir)
            raise UserError(planned["error"])
        raise SetupFailed(f"stage 0 could not plan the run: {planned['error']}")
    if data is not None:
        log.info("data: %s; %d training and %d held-out samples, %d features",
                 data.source.description, len(data.train_rows), len(data.held_rows),
                 data.features)
        log.info("run directory: %s", run_dir)
    msg.update(planned)
    return cfg, run_dir, data, msg


def _train(cfg: Config, rank: int, world: int, run_dir: Path, data: Data | None,
           setup: dict[str, Any], device: torch.device
           ) -> tuple[StageStats, Result | None, _Monitor | None]:
    """This rank's part of the stream, one segment (plan) after another."""
    features, batches = setup["features"], setup["batches"]
    schedule = make_schedule(cfg, batches)
    plan, problem = Plan.from_dict(setup["plan"]), setup["problem"]
    ckpt: Checkpoint | None = setup["checkpoint"]
    start_at = ckpt.micro_batch if ckpt is not None else 0
    # a resumed run's TensorBoard drops what the interrupted attempt wrote from start_at on
    metrics = Metrics(run_dir, stage=rank, tensorboard=tensorboard_on(cfg),
                      purge_step=start_at if setup["resumed"] else None)
    kv = store(setup["attempt"])
    progress = Progress(cfg, schedule, kv, rank, world)
    result, monitor = None, None
    stats = StageStats(rank, None, [])
    held: dict[int, RBM] = {}  # the layers this rank trains in the current segment
    segment, begin = 0, start_at
    try:
        if rank == 0:
            assert data is not None
            log.info("%s", schedule.describe())
            everything = make_layers(cfg, data, schedule, device)
            held_x, ref = monitor_data(data, device, dtype_of(cfg))
            # TensorBoard gets these at the end: the stages write to the same runs meanwhile;
            # a resumed run's metrics.jsonl has them from the first attempt
            start = (record_eval(everything, held_x, ref, metrics, 0, tensorboard=False)
                     if start_at == 0 else evaluate(everything, held_x, ref))
            result = Result(everything, start, [], 0.0, 0)
            monitor = _Monitor(held_x, ref, schedule.length)
            log.info("plan: %s", plan.describe())
            if start_at == 0:
                metrics.event(0, -1, "config", {}, text=_code(dump_yaml(cfg)))
            how = f"resumed at micro-batch {start_at}:\n" if setup["resumed"] else ""
            metrics.event(start_at, 0, "balancer/plan", {"at": start_at, "plan": plan.describe(),
                                                         "spec": plan.spec()},
                          text=_code(how + plan.describe()))
        mean = np.asarray(setup["feature_mean"], dtype=np.float32)
        held = _initial_layers(cfg, plan, rank, features, schedule, device, mean, start_at,
                               ckpt, run_dir)
        t0 = time.perf_counter()
        while True:
            role_of = plan.role(rank)
            if role_of is None:
                outcome = get_forever(kv, f"segment/{segment}")
            else:
                role = Role(plan, role_of[0], role_of[1], segment, begin)
                metrics.use(list(plan.stages[role.stage].layers), role.replica)
                end = _run_segment(cfg, rank, world, run_dir, role, held, schedule, features,
                                   device, metrics, stats, kv, problem, data, progress)
                stop = schedule.length if end[0] == END else end[1]
                for i, layer in held.items():  # a replica saw only some of the updates
                    layer.step = max(0, min(stop, schedule.ends[i]) - schedule.starts[i])
                if rank == plan.owner(0) and end[0] == END:
                    put(kv, f"segment/{segment}", {"end": True})
                outcome = ({"end": True} if end[0] == END
                           else get(kv, f"segment/{segment}", cfg.pipeline.timeout))
            if outcome.get("end"):
                break
            metrics.flush()  # a layer's next records may come from another rank
            metrics.purge_step = None  # later writers must keep this attempt's records
            new_plan = Plan.from_dict(outcome["plan"])
            begin = outcome["at"]
            held = _move_layers(cfg, plan, new_plan, rank, held, features, schedule, device,
                                begin)
            plan, segment = new_plan, segment + 1
            if rank == 0:
                log.info("re-planned at micro-batch %d: %s", begin, plan.describe())
                metrics.event(begin, 0, "balancer/plan", {"at": begin, "plan": plan.describe(),
                                                          "spec": plan.spec()},
                              text=_code(f"re-planned at micro-batch {begin}:\n"
                                         + plan.describe()))
        final = Saver(run_dir, cfg, schedule, schedule.length)
        for i, layer in held.items():
            if plan.owner(i) == rank:
                final.save(layer, schedule.length)
        role_of = plan.role(rank)
        stats.stage, stats.replica = (role_of if role_of is not None else (None, 0))
        stats.monitor_s = metrics.seconds
        stats.layers = sorted(held)
        if result is not None:
            result.seconds = time.perf_counter() - t0  # completed in _finish
    finally:
        progress.close()
        metrics.close()
    return stats, result, monitor


def _initial_layers(cfg: Config, plan: Plan, rank: int, features: int, schedule: Schedule,
                    device: torch.device, mean: np.ndarray, begin: int,
                    ckpt: Checkpoint | None, run_dir: Path) -> dict[int, RBM]:
    """This rank's layers at micro-batch ``begin``: fresh, or from the checkpoint (its state
    is per layer, so any plan can take it; a replica beyond the first starts as after a
    re-plan, which is also what the uninterrupted run did at that checkpoint)."""
    role = plan.role(rank)
    if role is None:
        return {}
    out = {}
    for i in plan.stages[role[0]].layers:
        layer = make_layer(cfg, i, features, schedule, device, mean if i == 0 else None)
        if ckpt is not None:
            layer.load_state_dict(ckpt.load(run_dir, i))
        if role[1] > 0:
            start_replica(layer, cfg.seed, role[1], begin)
        out[i] = layer
    return out


def _run_segment(cfg: Config, rank: int, world: int, run_dir: Path, role: Role,
                 held: dict[int, RBM], schedule: Schedule, features: int, device: torch.device,
                 metrics: Metrics, stats: StageStats, kv: dist.Store, problem: Problem,
                 data: Data | None, progress: Progress) -> tuple[int, int]:
    plan, stage = role.plan, role.plan.stages[role.stage]
    layers = [held[i] for i in stage.layers]
    sizes = [features] + cfg.sizes
    dtype, pl, b = dtype_of(cfg), cfg.pipeline, cfg.balancer
    name = f"stage {role.stage}" + (f" replica {role.replica}" if stage.replicas > 1 else "")
    send_timeout, recv_timeout = graded_timeouts(pl.timeout, role.stage, len(plan.stages))
    first, last = stage.layers[0], stage.layers[-1]
    outbox = (Outbox(plan, role.stage, role.replica, cfg.train.batch_size, sizes[last + 1],
                     dtype, device, pl.window, send_timeout, name, beat_every=pl.timeout / 4)
              if role.stage + 1 < len(plan.stages) else None)
    sync = None
    saver = (Saver(run_dir, cfg, schedule, role.begin, finalizer=rank == 0)
             if role.replica == 0 else None)
    if stage.replicas > 1:
        trained = [m for m in schedule.micro_batches(first, role.begin)
                   if any(schedule.trains(i, m) for i in stage.layers)]
        cuts = [c for c in boundaries(cfg.checkpoint.every, schedule.length) if c > role.begin]
        ticks, cut_set = round_boundaries(trained, b.sync_every * stage.replicas, cuts)
        sync = ReplicaSync(layers, stage.ranks, role.replica, b, ticks, pl.timeout, name,
                           metrics, cut_set, cfg.seed, tb_every=cfg.monitor.scalars_every)
    reporter = Reporter(kv, rank, role.segment) if b.replan else None
    decide = None
    source: Prefetcher | Inbox
    probe = None
    if role.stage == 0:
        if data is None:  # a replica of stage 0 on another rank reads the data too
            data = run_data(cfg, run_dir, values=False)  # trusted by rank 0's manifest
        probe = probe_data(cfg, data, device)
        positions = [(m, *schedule.data_position(m)) for m in role.micro_batches(schedule, 0)]
        source = Prefetcher(data, positions, cfg.data.prefetch, dtype, timeout=pl.setup_timeout)
        if b.replan:
            decide = _decider(cfg, kv, role, problem, metrics, schedule.length)
    else:
        source = Inbox(plan, role.stage, role.replica, cfg.train.batch_size, sizes[first],
                       dtype, device, recv_timeout, name, first_timeout=pl.setup_timeout,
                       on_beat=outbox.beat_if_quiet if outbox is not None else None)
    stats.segments.append(role.segment)
    try:
        return run_stage(cfg, rank, role, layers, schedule, source, outbox, sync, metrics,
                         device, stats, decide, reporter, probe, progress, saver)
    finally:
        stats.checkpoint_s += saver.seconds if saver is not None else 0.0
        if isinstance(source, Prefetcher):
            source.close()


def _decider(cfg: Config, kv: dist.Store, role: Role, problem: Problem, metrics: Metrics,
             length: int) -> Callable[[int], bool]:
    """Stage 0's answer at check ``q``: the coordinator decides and writes the decision; the
    other replicas of stage 0 read it, so all of them stop at the same micro-batch."""
    coordinator = (Coordinator(cfg, kv, role.plan, problem, role.segment, metrics, length)
                   if role.replica == 0 else None)

    def decide(q: int) -> bool:
        if coordinator is not None:
            new = coordinator.decide(q, q * cfg.balancer.check_every)
            if new is not None:
                put(kv, f"segment/{role.segment}", {"at": q * cfg.balancer.check_every,
                                                    "plan": new.to_dict()})
            return new is not None
        return bool(get(kv, f"decision/{q}", cfg.pipeline.timeout)["replan"])

    return decide


def _move_layers(cfg: Config, old: Plan, new: Plan, rank: int, held: dict[int, RBM],
                 features: int, schedule: Schedule, device: torch.device, begin: int
                 ) -> dict[int, RBM]:
    """Give every layer's state (weights, momentum, chains, generator, counters) to its owners
    under the new plan; every rank takes part. A layer's state is its first replica's (all
    replicas hold every update after the segment's final sync). New replicas beyond the first
    start with no velocity, so that the momentum carried over is counted once, and draw from a
    stream of their own."""
    role = new.role(rank)
    mine = set(new.stages[role[0]].layers) if role is not None else set()
    out: dict[int, RBM] = {}
    for i in range(new.layers):
        src = old.owner(i)
        s_old, s_new = old.stages[old.stage_of_layer(i)], new.stages[new.stage_of_layer(i)]
        if s_old.ranks == s_new.ranks == (src,):
            if i in mine:
                out[i] = held[i]
            continue
        box = [{k: v.cpu() for k, v in held[i].state_dict().items()} if rank == src else None]
        dist.broadcast_object_list(box, src=src)
        if i in mine:
            assert role is not None and box[0] is not None
            layer = held.get(i) or make_layer(cfg, i, features, schedule, device,
                                              np.zeros(features, np.float32) if i == 0 else None)
            layer.load_state_dict(box[0])
            if role[1] > 0:
                start_replica(layer, cfg.seed, role[1], begin)
            out[i] = layer
    return out


@dataclass
class _Monitor:
    """Rank 0's held-out and reference samples, read once for both evaluations."""

    held: torch.Tensor
    ref: torch.Tensor
    length: int


def _finish(cfg: Config, rank: int, world: int, run_dir: Path, data: Data | None,
            stats: StageStats, result: Result | None, monitor: _Monitor | None,
            device: torch.device) -> None:
    t0 = time.perf_counter()
    gathered: list[object] | None = [None] * world if rank == 0 else None
    dist.gather_object(stats.as_dict(), gathered, dst=0)  # every owner has saved its layers
    if rank != 0:
        return
    assert data is not None and result is not None and monitor is not None
    assert gathered is not None
    result.seconds += time.perf_counter() - t0  # until the last stage is done
    result.samples = sum(s["input_samples"] for s in gathered)  # type: ignore[index,misc]
    schedule = make_schedule(cfg, data.batches_per_epoch)
    finalize(run_dir, cfg, len(result.layers), schedule.length, schedule)
    for i, layer in enumerate(result.layers):
        layer.load_state_dict(torch.load(layer_state_path(run_dir, i), map_location=device,
                                         weights_only=True))
    metrics = Metrics(run_dir, stage=0, tensorboard=tensorboard_on(cfg))
    try:
        for i, row in enumerate(result.start):  # TensorBoard's share, kept back until now
            for tag, value in row.items():
                metrics.tb_scalar(0, i, f"eval/{tag}", value)
        result.end = record_eval(result.layers, monitor.held, monitor.ref, metrics,
                                 monitor.length)
        metrics.scalar(monitor.length, -1, "throughput/end_to_end_samples_per_s",
                       result.samples / result.seconds)
        try:
            record_end(cfg, metrics, result, monitor.held, monitor.length)
        except Exception as e:  # the run's results matter more than its pictures
            log.warning("monitoring at the end of the run failed: %s", e)
    finally:
        metrics.close()
    atomic_write(run_dir / STAGES_FILE, (json.dumps(gathered, indent=1) + "\n").encode())
    finish_run(run_dir, summary(cfg, data, result) + "\n" + stage_table(gathered))


def _code(text: str) -> str:
    """Text that TensorBoard's markdown shows as written."""
    return "\n".join("    " + line for line in text.splitlines())


def stage_table(stages: list[object]) -> str:
    lines = [f"{'rank':>4} {'stage':>5} {'layers':>6} {'batches':>8} {'busy':>6} "
             f"{'compute s':>10} {'recv wait s':>11} {'send wait s':>11} {'sync s':>7} "
             f"{'samples/s':>10} {'in flight':>9}"]
    for s in stages:
        assert isinstance(s, dict)
        stage = "idle" if s["stage"] is None else (
            f"{s['stage']}.{s['replica']}" if s["layers"] and s["replica"] else str(s["stage"]))
        lines.append(
            f"{s['rank']:>4} {stage:>5} {','.join(map(str, s['layers'])):>6} "
            f"{s['micro_batches']:>8} {s['busy_frac']:>6.1%} {s['compute_s']:>10.2f} "
            f"{s['recv_wait_s']:>11.2f} {s['send_wait_s']:>11.2f} {s['sync_wait_s']:>7.2f} "
            f"{s['samples_per_s']:>10.0f} {s['max_in_flight']:>9}")
    return "\n".join(lines)
