"""Ranks and threads planned together: how many processes, how many threads each, which layers.

Pure Python, like the rest of the planner. For every number of ranks ``n`` and every way of
sharing the machine's cores among them (``thread_options``), each rank's speed factor is its
threads' time multiplier (``scale``) times how much its ranks oversubscribe the cores
(``shared``), and the exact planner (``planner.solve``) finds the best layer-to-rank plan for
those speeds. The choice is the candidate with the smallest predicted wall time: start-up (a
process each, ``Machine.start_s``) plus the stream's micro-batches times the plan's bottleneck.

Time multiplier of ``t`` threads (a rank's step time over its time on one thread):

- **modelled**: Amdahl's law, ``serial + (1 - serial) / t``. ``SERIAL`` was fitted on this
  project's 2-core machine, quiet: the quickstart's three CD steps (batch 100) took 25.2 ms on
  one thread and 15.0 ms on two (median ratio 0.60 of 7 interleaved rounds), so
  ``serial = 2 * 0.60 - 1 = 0.20`` (docs/balancer.md);
- **profiled** (``balancer.costs: profile``): the same law with ``serial`` fitted from the
  steps timed on one thread and on every core (``fit_serial``).

The search is exact (against brute force in tests/test_threads.py) while the candidates number
at most ``EXACT_LIMIT``: every partition of the cores into ``n`` parts; with more cores than
that, each ``n`` tries the even split and a few uneven ones (``_coarse``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipedbn.balancer.planner import Problem, Solution, solve

SERIAL = 0.20
"""Modelled serial fraction of a CD step (Amdahl), fitted as the module docstring says."""
START_S = 2.5
"""Seconds to start a pipeline of local processes beyond training in this one (rendezvous,
process group, setup), and ``START_RANK_S`` more per process (spawn, importing torch):
docs/benchmarks.md measured 4.2 s of start-up for 2 processes and 10.1 s for 10 on 2 cores."""
START_RANK_S = 0.75
THREAD_FLOPS = 1e8
"""FLOPs of a CD step (one micro-batch of one layer) below which a rank gets one thread: the
products are too small to split, and the threads' hand-offs cost more than they save
(measured here: configs/tiny.yaml's 64-64 DBN, batch 50, took 3.6x as long on 2 threads as on
1 with the machine loaded, while the quickstart's 3.9e8-FLOP steps gained 1.5x)."""
EXACT_LIMIT = 4000
"""Most thread vectors searched exactly (every partition of the cores)."""


@dataclass(frozen=True)
class Machine:
    """What the ranks run on: ``cores`` usable cores and how a step scales with threads."""

    cores: int
    serial: float = SERIAL
    start_s: float = START_S
    start_rank_s: float = START_RANK_S

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"{self.cores} cores: a machine has at least 1")
        if not 0.0 <= self.serial <= 1.0:
            raise ValueError(f"serial fraction {self.serial}: must be within [0, 1]")

    def scale(self, threads: int) -> float:
        """A rank's step time on ``threads`` threads over its time on one (Amdahl)."""
        return self.serial + (1.0 - self.serial) / threads

    def start(self, nproc: int) -> float:
        """Seconds of start-up of ``nproc`` local processes (0 for training in this one)."""
        return 0.0 if nproc == 1 else self.start_s + self.start_rank_s * nproc


@dataclass(frozen=True)
class Choice:
    threads: tuple[int, ...]
    """Threads of each rank; ``len(threads)`` processes."""
    solution: Solution
    """The plan for those ranks and its stage periods (seconds per micro-batch)."""
    predicted_s: float
    """Start-up plus training: ``start(n) + micro_batches * bottleneck``."""

    @property
    def nproc(self) -> int:
        return len(self.threads)

    def samples_per_s(self, batch_size: int) -> float:
        return self.solution.samples_per_s(batch_size)


def fit_serial(one: float, every: float, cores: int) -> float:
    """The Amdahl serial fraction that explains ``one`` second on one thread and ``every`` on
    ``cores`` threads (clamped to [0, 1]; 1 when there is only one core to learn from)."""
    if cores < 2 or one <= 0:
        return 1.0
    ratio = every / one  # = serial + (1 - serial) / cores
    return min(1.0, max(0.0, (ratio - 1.0 / cores) / (1.0 - 1.0 / cores)))


def shared(threads: Sequence[int], cores: int) -> float:
    """Time multiplier of ranks whose threads together oversubscribe the cores."""
    return max(1.0, sum(threads) / cores)


def speeds(threads: Sequence[int], machine: Machine) -> list[float]:
    """Each rank's speed factor for the planner (time multiplier; 1 = one thread, alone)."""
    share = shared(threads, machine.cores)
    return [machine.scale(t) * share for t in threads]


def thread_options(cores: int, n: int, most: int | None = None) -> list[tuple[int, ...]]:
    """The thread vectors (non-increasing: the planner places ranks itself) worth pricing for
    ``n`` ranks of at most ``most`` threads each: every partition of the cores into ``n`` parts
    (more threads never make a rank slower, and the cores left over would idle), or one thread
    each when ranks outnumber cores."""
    return list(_options(cores, n, most))


def _options(cores: int, n: int, most: int | None) -> Iterator[tuple[int, ...]]:
    if n > cores:
        return iter([(1,) * n])
    cap = min(cores, most or cores)
    return _partitions(min(cores, n * cap), n, cap)


def _partitions(total: int, parts: int, largest: int) -> Iterator[tuple[int, ...]]:
    if parts == 1:
        if total <= largest:
            yield (total,)
        return
    for first in range(min(largest, total - parts + 1), 0, -1):
        if first * parts < total:
            break
        for rest in _partitions(total - first, parts - 1, first):
            yield (first, *rest)


def _coarse(cores: int, n: int, most: int | None = None) -> list[tuple[int, ...]]:
    """For machines with too many cores to try every split: the even split, and half the cores
    on one rank (a bottleneck) with the rest split evenly among the others."""
    if n > cores:
        return [(1,) * n]
    cap = min(cores, most or cores)
    total = min(cores, n * cap)
    out = {_even(total, n)}
    half = min(cap, total // 2)
    if n > 1 and half > _even(total, n)[0] and total - half >= n - 1:
        rest = _even(total - half, n - 1)
        if rest[0] <= half:
            out.add((half, *rest))
    return sorted(out, reverse=True)


def _even(cores: int, n: int) -> tuple[int, ...]:
    return tuple(sorted((cores // n + (k < cores % n) for k in range(n)), reverse=True))


def candidates(cores: int, nprocs: Sequence[int], most: int | None = None
               ) -> list[tuple[int, ...]]:
    """Every thread vector searched for these numbers of ranks: all of ``thread_options`` while
    they number at most ``EXACT_LIMIT``, else ``_coarse``'s few per number of ranks."""
    exact: list[tuple[int, ...]] = []
    for n in nprocs:
        for t in _options(cores, n, most):
            exact.append(t)
            if len(exact) > EXACT_LIMIT:
                return [t for k in nprocs for t in _coarse(cores, k, most)]
    return exact


def price(problem: Problem, threads: Sequence[int], machine: Machine, micro_batches: int,
          talk_s: float = 0.0) -> Choice:
    """The best plan for ranks with these threads, and its predicted wall time; ``talk_s``:
    seconds per micro-batch each rank spends talking to its neighbours (none in one rank)."""
    n = len(threads)
    ranks = dataclasses.replace(problem, world=n, speed=speeds(threads, machine),
                                extra=[talk_s] * n if n > 1 else None)
    solution = solve(ranks)
    return Choice(tuple(threads), solution, machine.start(n) + micro_batches * solution.bottleneck)


def choose(problem: Problem, machine: Machine, micro_batches: int,
           nprocs: Sequence[int] | None = None, talk_s: float = 0.0,
           most_threads: int | None = None) -> Choice:
    """The ranks, threads and plan with the smallest predicted wall time. ``problem`` gives the
    layers' costs on one thread, alone on a core (its ``world``, ``speed`` and ``extra`` are
    replaced); ``nprocs``: the numbers of ranks allowed (default 1 up to the layers, or up to
    the cores when replicas are allowed); ``talk_s`` as for ``price``; ``most_threads``: a cap
    on any rank's threads (``THREAD_FLOPS``). Ties go to fewer
    processes, then to the earlier thread vector (more threads on the first ranks)."""
    if micro_batches < 1:
        raise ValueError(f"{micro_batches} micro-batches: a run has at least 1")
    if nprocs is None:
        layers = len(problem.costs)
        nprocs = range(1, (layers if problem.max_replicas == 1
                           else max(machine.cores, layers)) + 1)
    if not nprocs or min(nprocs) < 1:
        raise ValueError(f"numbers of ranks {list(nprocs)}: give one or more, each >= 1")
    best: Choice | None = None
    refused: ValueError | None = None
    for threads in candidates(machine.cores, sorted(set(nprocs)), most_threads):
        try:
            choice = price(problem, threads, machine, micro_batches, talk_s)
        except ValueError as e:  # this many ranks cannot hold the layers (memory)
            refused = e
            continue
        if best is None or choice.predicted_s < best.predicted_s * (1 - 1e-9):
            best = choice
    if best is None:
        assert refused is not None
        raise refused  # the planner's own message for the most ranks tried
    return best


def describe_threads(choice: Choice, batch_size: int) -> str:
    """Lines for ``pipedbn plan``: threads per rank and the predicted time."""
    ranks = ", ".join(f"rank {k}: {t}" for k, t in enumerate(choice.threads))
    return (f"threads per rank: {ranks} (predicted {choice.predicted_s:.3g} s with start-up, "
            f"{choice.samples_per_s(batch_size):,.0f} samples/s)")
