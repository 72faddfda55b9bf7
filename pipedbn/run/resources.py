"""What a run on this machine uses: the device, the number of processes and each one's threads.

``train.device: auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``; ``train.threads:
auto`` becomes one number per rank. Both are written into the run's ``config.yaml`` as numbers,
so re-running that file starts the same processes with the same threads (and the same weights:
a layer's arithmetic depends on its rank's thread count).

- On the CPU with ``train.threads: auto``, the cores are the ones this process may run on
  (``os.sched_getaffinity``, not ``os.cpu_count``: a ``taskset`` or a container's CPU set
  counts), and ``balancer.threads.choose`` picks the number of processes (unless ``--nproc``
  fixes it), the threads of each and the plan, from the layers' modelled costs (FLOPs at
  ``balancer.flops``) or, with ``balancer.costs: profile``, from steps timed here on one thread
  and on every core. When the best plan for those threads is not the one the ranks would make
  by themselves, it is written too (``balancer.plan``).
- On CUDA: one process for one GPU (every layer on it), else one process per GPU (the planner
  groups the layers); the cores are shared among the processes.
- An explicit ``train.threads`` keeps its meaning: a number is every process's threads (one
  process per layer unless ``--nproc`` says otherwise), a list gives each rank's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from pipedbn.balancer import Plan, cd_flops, forward_flops
from pipedbn.balancer.runtime import first_plan, problem_for, profile_layers
from pipedbn.balancer.threads import THREAD_FLOPS, Choice, Machine, choose, fit_serial
from pipedbn.config import Config, TrainConfig
from pipedbn.data.loader import open_data
from pipedbn.errors import UserError
from pipedbn.pipeline.device import gpus, local_device
from pipedbn.pipeline.layers import make_schedule
from stages import registry


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_device(device: str) -> str:
    """``train.device`` with ``auto`` decided: ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_arg(text: str) -> torch.device:
    """A ``--device`` option (``cpu``, ``cuda``, ``cuda:N`` or ``auto``) as a device here;
    UserError naming the option when this torch cannot use it."""
    problems = TrainConfig(device=text).device_problems()
    if problems:
        raise UserError("--device" + problems[0].removeprefix("train.device"))
    return torch.device(resolve_device(text))


def rank_threads(cfg: Config, rank: int) -> int:
    """The threads of ``rank`` in a config whose ``train.threads`` is resolved."""
    t = cfg.train.threads
    if isinstance(t, list):
        if rank >= len(t):
            raise UserError(f"train.threads: {t} names {len(t)} ranks, but rank {rank} is "
                            "running; give one number per process, a single number, or auto")
        return t[rank]
    assert isinstance(t, int), f"train.threads {t!r} is unresolved"
    return t


def explicit_nproc(cfg: Config) -> int:
    """Processes to start for explicit threads: the ranks an explicit plan names, as many as a
    list of threads names, else one per layer."""
    if isinstance(cfg.train.threads, list):
        return len(cfg.train.threads)
    if cfg.balancer.plan == "auto":
        return len(cfg.layers)
    plan = Plan.parse(cfg.balancer.plan, 1 << 16, len(cfg.layers))
    return max(r for st in plan.stages for r in st.ranks) + 1


def stream_costs(cfg: Config, features: int, batches_per_epoch: int,
                 per_step: list[float] | None = None) -> tuple[list[float], int]:
    """Each layer's mean seconds per micro-batch of the stream on one thread (its CD updates,
    and forward passes once frozen, spread over the whole stream) and the stream's length.
    ``per_step``: a CD step's measured seconds per layer (default: FLOPs at
    ``balancer.flops``)."""
    schedule = make_schedule(cfg, batches_per_epoch)
    sizes = [features] + cfg.sizes
    length = schedule.length
    tops = [schedule.top(m) for m in range(length)]
    costs = []
    for i, lc in enumerate(cfg.layers):
        through = sum(1 for t in tops if t >= i)
        steps = schedule.steps(i)
        cd = cd_flops(sizes[i], sizes[i + 1], lc.k)
        fwd = forward_flops(sizes[i], sizes[i + 1])
        step_s = (per_step[i] if per_step is not None
                  else cd * cfg.train.batch_size / cfg.balancer.flops)
        mean = step_s * (steps + (through - steps) * fwd / cd) / length
        costs.append(max(mean, 1e-12))
    return costs, length


def talk_seconds(cfg: Config, features: int) -> float:
    """A rank's seconds per micro-batch of receiving and sending activations (two messages of
    the widest layer's micro-batch at ``balancer.bandwidth`` and ``balancer.latency``)."""
    width = 8 if cfg.train.dtype == "float64" else 4
    widest = max([features] + cfg.sizes)
    b = cfg.balancer
    return 2 * (b.latency + cfg.train.batch_size * widest * width / b.bandwidth)


def plan_threads(cfg: Config, features: int, batches_per_epoch: int, nproc: int | None,
                 cores: int) -> Choice:
    """The processes, threads and plan ``train.threads: auto`` gives on ``cores`` CPU cores."""
    machine = Machine(cores)
    per_step = None
    if cfg.balancer.costs == "profile":
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            per_step = profile_layers(cfg, features, torch.device("cpu"))
            torch.set_num_threads(cores)
            every = profile_layers(cfg, features, torch.device("cpu"))
        finally:
            torch.set_num_threads(before)
        machine = Machine(cores, serial=fit_serial(sum(per_step), sum(every), cores))
    costs, length = stream_costs(cfg, features, batches_per_epoch, per_step)
    problem = problem_for(cfg, features, 1, costs=costs)
    sizes = [features] + cfg.sizes
    largest = max(cd_flops(sizes[i], sizes[i + 1], lc.k) * cfg.train.batch_size
                  for i, lc in enumerate(cfg.layers))
    try:
        return choose(problem, machine, length, None if nproc is None else [nproc],
                      talk_seconds(cfg, features), 1 if largest < THREAD_FLOPS else None)
    except ValueError as e:
        raise UserError(f"balancer: {e}") from None


def data_shape(cfg: Config) -> tuple[int, int]:
    """(features, micro-batches per epoch) of the configured data, from its headers."""
    data = open_data(cfg, unit_range=registry.get(cfg.layers[0].kind).unit_visible,
                     values=False)
    return data.features, data.batches_per_epoch


def resolve(cfg: Config, nproc: int | None, shape: Callable[[], tuple[int, int]],
            cores: int | None = None, resuming: bool = False
            ) -> tuple[Config, int, Choice | None]:
    """``cfg`` with ``train.device`` and ``train.threads`` decided, the number of processes to
    start here, and the threads planner's choice when it made one. ``shape`` gives the data's
    (features, micro-batches per epoch) (``data_shape``), asked only when the planner needs
    them. ``resuming``: a run continued on another number of processes than its
    ``config.yaml`` lists threads for chooses them again (``auto``)."""
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc {nproc}: give a number of processes >= 1")
    cores = usable_cores() if cores is None else cores
    train = dataclasses.replace(cfg.train, device=resolve_device(cfg.train.device))
    cfg = dataclasses.replace(cfg, train=train)
    t = train.threads
    if isinstance(t, list) and nproc is not None and nproc != len(t) and resuming:
        t = "auto"
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(train, threads=t))
    if isinstance(t, list) and nproc is not None and nproc != len(t):
        raise UserError(f"--nproc {nproc} but train.threads lists {len(t)} ranks ({t}); give "
                        "as many processes as numbers, or train.threads=auto")
    if t != "auto":
        return cfg, explicit_nproc(cfg) if nproc is None else nproc, None
    if local_device(train.device).type == "cuda":
        n = nproc or (explicit_nproc(cfg) if cfg.balancer.plan != "auto"
                      else min(gpus(), len(cfg.layers)))
        return _with(cfg, [max(1, cores // n)] * n), n, None
    if cfg.balancer.plan != "auto":
        n = nproc or explicit_nproc(cfg)
        return _with(cfg, [max(1, cores // n + (k < cores % n)) for k in range(n)]), n, None
    features, batches_per_epoch = shape()
    choice = plan_threads(cfg, features, batches_per_epoch, nproc, cores)
    out = _with(cfg, list(choice.threads))
    if choice.nproc > 1 and first_plan(out, features, choice.nproc)[0] != choice.solution.plan:
        out = dataclasses.replace(out, balancer=dataclasses.replace(
            out.balancer, plan=choice.solution.plan.spec()))
    return out, choice.nproc, choice


def torchrun_threads(cfg: Config, local_world: int) -> Config:
    """Under a launcher: ``auto`` threads share this node's cores among its processes."""
    train = dataclasses.replace(cfg.train, device=resolve_device(cfg.train.device))
    if train.threads == "auto":
        train = dataclasses.replace(train, threads=max(1, usable_cores() // max(1, local_world)))
    return dataclasses.replace(cfg, train=train)


def _with(cfg: Config, threads: list[int]) -> Config:
    """``cfg`` with these threads per rank: a list even when they are equal, since its length
    is the number of processes a re-run starts."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
