"""The threads planner (balancer/threads.py) against brute force, and the resources it resolves
(run/resources.py): affinity, ``train.threads: auto``, ``train.device: auto``."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from pipedbn.balancer import Problem
from pipedbn.balancer.threads import (
    EXACT_LIMIT,
    Machine,
    candidates,
    choose,
    fit_serial,
    thread_options,
)
from pipedbn.config import Config, config_from_text, resolve_defaults
from pipedbn.errors import ConfigError, UserError
from pipedbn.run.resources import (
    rank_threads,
    resolve,
    resolve_device,
    stream_costs,
    usable_cores,
)


def cfg_of(text: str) -> Config:
    return config_from_text(text, "test")


def brute(costs: list[float], machine: Machine, micro_batches: int, talk: float,
          most: int) -> float:
    """The smallest predicted wall time over every number of ranks, every thread vector (each
    rank 1..cores threads, at most the cores in all, or one each when ranks outnumber cores),
    every contiguous grouping and every order of ranks, without replicas."""
    L, cores = len(costs), machine.cores
    best = math.inf
    for n in range(1, most + 1):
        vectors = ([(1,) * n] if n > cores else
                   [t for t in itertools.product(range(1, cores + 1), repeat=n)
                    if sum(t) <= cores])
        for threads in vectors:
            share = max(1.0, sum(threads) / cores)
            for cuts in itertools.combinations(range(1, L), n - 1) if n <= L else ():
                bounds = [0, *cuts, L]
                groups = [sum(costs[a:b]) for a, b in itertools.pairwise(bounds)]
                for order in itertools.permutations(range(n)):
                    period = max(g * machine.scale(threads[k]) * share
                                 + (talk if n > 1 else 0.0) for g, k in zip(groups, order,
                                                                              strict=True))
                    best = min(best, machine.start(n) + micro_batches * period)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_choose_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    L = 1 + seed % 4
    costs = (torch.rand(L, generator=g) * 0.02 + 1e-4).tolist()
    cores = 1 + seed % 4
    serial = [0.0, 0.15, 0.3, 0.7][seed % 4]
    machine = Machine(cores, serial=serial, start_s=[0.0, 0.5, 2.5][seed % 3],
                      start_rank_s=0.3 * (seed % 2))
    micro = [10, 400, 5000][seed % 3]
    talk = [0.0, 1e-3][seed % 2]
    choice = choose(Problem(costs=costs, world=1, max_replicas=1), machine, micro, talk_s=talk)
    assert choice.predicted_s == pytest.approx(brute(costs, machine, micro, talk, L), rel=1e-9)
    assert sum(choice.threads) <= max(cores, choice.nproc)


def test_bottleneck_rank_gets_more_threads() -> None:
    """One heavy layer and two light ones on 4 cores, start-up free: the heavy layer's rank
    takes the spare cores."""
    costs = [0.001, 0.001, 0.02]
    choice = choose(Problem(costs=costs, world=1, max_replicas=1),
                    Machine(4, serial=0.5, start_s=0.0, start_rank_s=0.0), 1000)
    heavy = next(s for s in choice.solution.plan.stages if 2 in s.layers)
    assert choice.threads[heavy.ranks[0]] == max(choice.threads) > min(choice.threads)


def test_one_core_means_one_thread_and_start_up_favours_one_process() -> None:
    costs = [0.01, 0.01, 0.01]
    one = choose(Problem(costs=costs, world=1, max_replicas=1), Machine(1), 1000)
    assert one.threads == (1,)
    # two cores, a short run: two processes would not pay for their start-up
    short = choose(Problem(costs=costs, world=1, max_replicas=1), Machine(2), 10)
    assert short.threads == (2,)


def test_fixed_nproc_and_oversubscription() -> None:
    costs = [0.01, 0.01, 0.01]
    three = choose(Problem(costs=costs, world=1, max_replicas=1), Machine(2), 1000, nprocs=[3])
    assert three.threads == (1, 1, 1)
    # three one-thread ranks on two cores share them: each is priced 1.5x slower
    assert three.solution.bottleneck == pytest.approx(0.01 * 1.5)


def test_thread_options_and_the_coarse_search() -> None:
    assert thread_options(4, 2) == [(3, 1), (2, 2)]
    assert thread_options(2, 3) == [(1, 1, 1)]
    assert thread_options(4, 2, most=1) == [(1, 1)]
    assert thread_options(5, 2, most=2) == [(2, 2)]
    assert all(sum(t) == 6 and len(t) == 3 for t in thread_options(6, 3))
    many = candidates(256, range(1, 9))  # too many partitions: even splits and a few others
    assert len(many) < EXACT_LIMIT and (256,) in many and (32,) * 8 in many


def test_fit_serial() -> None:
    m = Machine(8, serial=0.2)
    assert fit_serial(1.0, m.scale(8), 8) == pytest.approx(0.2)
    assert fit_serial(1.0, 1.0, 1) == 1.0


def test_cores_follow_affinity() -> None:
    """A process pinned to one core (``taskset -c 0`` does the same) plans one thread."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == 1
        cfg = resolve_defaults(cfg_of("layers: [500, 500]\ntrain: {device: cpu}\n"))
        out, nproc, choice = resolve(cfg, None, lambda: (784, 50))
        assert choice is not None and nproc == 1 and out.train.threads == [1]
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)


def test_auto_threads_are_written_as_numbers() -> None:
    cfg = resolve_defaults(cfg_of("layers: [500, 500, 2000]\n"))
    assert cfg.train.threads == "auto" and cfg.train.device == "auto"
    out, nproc, choice = resolve(cfg, None, lambda: (784, 45), cores=2)
    assert choice is not None
    assert isinstance(out.train.threads, list) and len(out.train.threads) == nproc
    assert out.train.device == "cpu" if not torch.cuda.is_available() else "cuda"
    assert [rank_threads(out, k) for k in range(nproc)] == list(choice.threads)
    # resolving the resolved config again changes nothing
    again, n2, c2 = resolve(out, None, lambda: (784, 45), cores=2)
    assert (again, n2, c2) == (out, nproc, None)
    # --nproc fixes the number of processes; the threads share the cores
    two, n, _ = resolve(cfg, 2, lambda: (784, 45), cores=2)
    assert n == 2 and two.train.threads == [1, 1]


def test_small_layers_get_one_thread() -> None:
    """Steps under THREAD_FLOPS are too small to split: one thread, here one process."""
    cfg = resolve_defaults(cfg_of("layers: [32, 24, 16]\n"))
    out, nproc, _ = resolve(cfg, None, lambda: (64, 24), cores=4)
    assert out.train.threads == [1] and nproc == 1


def test_explicit_threads_keep_todays_meaning() -> None:
    cfg = resolve_defaults(cfg_of("layers: [8, 8, 8]\ntrain: {threads: 1}\n"))
    out, nproc, choice = resolve(cfg, None, lambda: pytest.fail("no data needed"), cores=2)
    assert (out.train.threads, nproc, choice) == (1, 3, None)
    lst = resolve_defaults(cfg_of("layers: [8, 8, 8]\ntrain: {threads: [2, 1]}\n"))
    assert resolve(lst, None, lambda: (4, 4), cores=2)[1] == 2
    with pytest.raises(UserError, match="--nproc 3 but train.threads lists 2 ranks"):
        resolve(lst, 3, lambda: (4, 4), cores=2)
    # a resumed run on another number of processes chooses its threads again
    again, n, _ = resolve(lst, 3, lambda: (4, 4), cores=2, resuming=True)
    assert n == 3 and again.train.threads == [1, 1, 1]


def test_threads_field_checks() -> None:
    with pytest.raises(ConfigError, match="train.threads.1: must be > 0"):
        cfg_of("layers: [8]\ntrain: {threads: [1, 0]}\n")
    with pytest.raises(ConfigError, match="train.threads: expected an integer or a list"):
        cfg_of("layers: [8]\ntrain: {threads: many}\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_device_on_a_cpu_machine_is_the_cpu() -> None:
    assert resolve_device("auto") == "cpu"


@pytest.mark.cuda
def test_auto_device_with_cuda_is_one_process_on_the_gpu() -> None:
    assert resolve_device("auto") == "cuda"
    cfg = resolve_defaults(cfg_of("layers: [64, 64, 64]\n"))
    out, nproc, _ = resolve(cfg, None, lambda: (64, 10))
    assert out.train.device == "cuda"
    assert nproc == min(torch.cuda.device_count(), 3)


def test_stream_costs_spread_each_layers_work() -> None:
    cfg = resolve_defaults(cfg_of(
        "layers: [{hidden: 10, epochs: 2}, {hidden: 10, epochs: 1}]\n"
        "train: {offset_epochs: 1.0}\nbalancer: {flops: 1.0e6}\n"))
    costs, length = stream_costs(cfg, 10, 5)
    # layer 0 trains on 10 micro-batches of the 10; layer 1 on 5 (from micro-batch 5)
    assert length == 10
    step = (6 + 4) * 10 * 10 * cfg.train.batch_size / 1e6
    assert costs == pytest.approx([step, step * 5 / 10])
