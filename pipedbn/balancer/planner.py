"""The exact planner: the plan whose slowest stage is as fast as it can be.

Model. A stage is a contiguous group G of layers on a set R of r ranks. Micro-batch m of the
stream goes to replica ``m mod r``, so each replica sees every r-th micro-batch and the stage's
period (seconds per micro-batch through the stage) is

    max over k in R of (speed[k] * sum(costs[G]) + extra[k] + sync(G, r) / sync_every) / r

with ``sync(G, r) = 0`` for r = 1 and ``(r - 1) * (latency + sum(sync_bytes[G]) / bandwidth)``
otherwise: at a sync every replica sends its update to each of the r - 1 others. The slowest
replica sets the pace because replicas take micro-batches in turn. The pipeline's period is the
largest stage period (the bottleneck). A rank holding G needs ``sum(memory[G]) <= memory_cap``.
Ranks may stay idle.

Search. Ranks with equal (speed, extra) are interchangeable, so they form a *class* and a stage
is described by how many ranks it takes from each class. A dynamic programme over (first layer of
the next stage, ranks still unused per class) tries every contiguous grouping, every replica
count and every mix of classes, so its answer is exact. A second pass over the same states,
allowed only stages within a relative ``TIE`` of the optimum, breaks ties: (1) the fewest extra
replicas (sum of r - 1), (2) the most stages, (3) the lowest ranks earliest (stage 0 gets the
lowest-numbered ranks that fit, then stage 1, ...), (4) the earlier cut. Within a class the
lowest-numbered unused ranks go to the earliest stage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipedbn.balancer.plan import Plan, Stage, _list, _span

TIE = 1e-9  # plans within this relative margin of the optimal bottleneck count as equally fast
MAX_STEPS = 20_000_000  # a few seconds of pure Python; beyond it the search refuses to start
MiB = 2.0**20


@dataclass
class Problem:
    """What the planner plans for; checked when made (ValueError on bad input)."""

    costs: list[float]
    """Seconds per micro-batch of each layer on a rank of speed 1; one per layer, each > 0."""
    world: int
    """Ranks available (>= 1)."""
    speed: list[float] | None = None
    """Per-rank time multiplier: 1 nominal, 2 twice as slow. Default all 1."""
    extra: list[float] | None = None
    """Per-rank seconds added to every micro-batch (e.g. a rank that sleeps). Default 0."""
    sync_bytes: list[float] | None = None
    """Per layer, bytes a replica sends to each peer at one sync. Default 0."""
    bandwidth: float = 1e9
    """Bytes per second of one link."""
    latency: float = 1e-4
    """Seconds per sync message."""
    sync_every: int = 1
    """A replica syncs once every ``sync_every`` of its own micro-batches."""
    memory: list[float] | None = None
    """Per layer, bytes a rank needs to hold it."""
    memory_cap: float | None = None
    """Bytes one rank can hold; None = unlimited."""
    max_replicas: int | None = None
    """Most ranks one stage may use; 1 = no replicas; None = no limit."""

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class Solution:
    plan: Plan
    stage_times: list[float]
    """Each stage's period, seconds per micro-batch."""
    bottleneck: float
    """The largest stage period: the pipeline's seconds per micro-batch."""

    def samples_per_s(self, batch_size: int) -> float:
        """Predicted throughput with micro-batches of ``batch_size`` samples."""
        return batch_size / self.bottleneck


def stage_time(problem: Problem, layers: Sequence[int], ranks: Sequence[int]) -> float:
    """Period (seconds per micro-batch) of a stage holding ``layers`` on ``ranks``."""
    p = problem
    if not layers or not all(0 <= i < len(p.costs) for i in layers):
        raise ValueError(f"stage layers {list(layers)}: give one or more of 0..{len(p.costs) - 1}")
    if not ranks or not all(0 <= k < p.world for k in ranks) or len(set(ranks)) < len(ranks):
        raise ValueError(f"stage ranks {list(ranks)}: give one or more distinct ranks of "
                         f"0..{p.world - 1}")
    speed, extra = _speeds(p), _extras(p)
    cost = sum(p.costs[i] for i in layers)
    worst = max(speed[k] * cost + extra[k] for k in ranks)
    return _period(worst, _sync(p, layers, len(ranks)), len(ranks), p.sync_every)


def evaluate(problem: Problem, plan: Plan) -> list[float]:
    """Each stage's period under ``plan``, e.g. the plan in use on newly measured costs."""
    plan.validate()
    if plan.layers != len(problem.costs):
        raise ValueError(f"plan {plan.spec()!r} has {plan.layers} layers but the problem has "
                         f"{len(problem.costs)}")
    if any(k >= problem.world for s in plan.stages for k in s.ranks):
        raise ValueError(f"plan {plan.spec()!r} uses ranks beyond the problem's world of "
                         f"{problem.world}")
    return [stage_time(problem, s.layers, s.ranks) for s in plan.stages]


def solve(problem: Problem) -> Solution:
    """The plan with the smallest bottleneck (exact; ties broken as the module docstring says)."""
    p = problem
    _check(p)
    _check_memory(p)
    L, world = len(p.costs), p.world
    speed, extra = _speeds(p), _extras(p)
    kinds: dict[tuple[float, float], list[int]] = {}
    for k in range(world):
        kinds.setdefault((speed[k], extra[k]), []).append(k)
    classes = list(kinds.values())  # ordered by their lowest rank; ranks ascending within
    sizes = [len(c) for c in classes]
    # Every (state, take) pair for each (first, last) layer of a later stage, and every take of
    # all ranks for each last layer of stage 0.
    steps = math.prod((n + 1) * (n + 2) // 2 for n in sizes) * L * (L - 1) // 2 \
        + math.prod(n + 1 for n in sizes) * L
    if steps > MAX_STEPS:
        raise ValueError(
            f"{world} ranks of {len(classes)} different (speed, extra) kinds and {L} layers: the "
            f"exact search would take about {steps:.1e} steps; round speed and extra to fewer "
            "distinct values (ranks with equal values are interchangeable)")

    # A state (or a stage's take) is a count per class, packed into one mixed-radix integer.
    strides = [math.prod(n + 1 for n in sizes[:c]) for c in range(len(sizes))]
    nstates = math.prod(n + 1 for n in sizes)
    full = nstates - 1
    counts = [[v // s % (n + 1) for n, s in zip(sizes, strides, strict=True)]
              for v in range(nstates)]
    size = [sum(c) for c in counts]
    subs = []  # subs[state]: (take, state - take) for every non-empty take the state can give
    for state, cnt in enumerate(counts):
        takes = (sum(x * s for x, s in zip(take, strides, strict=True))
                 for take in itertools.product(*(range(c + 1) for c in cnt)))
        subs.append([(v, state - v) for v in takes if v])

    # spans[i]: (last layer j, period of layers i..j for every take) for each j that fits memory
    cap = math.inf if p.memory_cap is None else p.memory_cap
    memory = p.memory or [0.0] * L
    most = p.max_replicas or world
    spans: list[list[tuple[int, list[float]]]] = []
    for i in range(L):
        spans.append([])
        for j in range(i, L):
            if sum(memory[i:j + 1]) > cap:
                break
            cost = sum(p.costs[i:j + 1])
            work = [speed[c[0]] * cost + extra[c[0]] for c in classes]
            sync = [_sync(p, range(i, j + 1), r) for r in range(world + 1)]
            spans[i].append((j, [
                _period(max(work[c] for c, x in enumerate(cnt) if x), sync[r], r, p.sync_every)
                if 0 < r <= most else math.inf for cnt, r in zip(counts, size, strict=True)]))

    # Pass 1: best[i][state] = smallest bottleneck of layers i.. with the ranks of `state`.
    best = [[math.inf] * nstates for _ in range(L)] + [[0.0] * nstates]
    for i in reversed(range(L)):
        for state in range(nstates) if i else [full]:
            b = math.inf
            for j, period in spans[i]:
                after = best[j + 1]
                for v, rest in subs[state]:
                    x, y = period[v], after[rest]
                    if x < b and y < b:
                        b = x if x > y else y
            best[i][state] = b
    optimum = best[0][full]
    assert optimum < math.inf, "memory was checked to fit"

    # Pass 2: fewest[i][state] = least (extra replicas, -stages) of layers i.. among stages within
    # the tie margin, as one integer: stages <= L, so (L + 1) per extra replica dominates them.
    limit = optimum * (1 + TIE)
    score = [(r - 1) * (L + 1) - 1 for r in size]
    fewest = [[math.inf] * nstates for _ in range(L)] + [[0.0] * nstates]
    for i in reversed(range(L)):
        for state in range(nstates) if i else [full]:
            b = math.inf
            for j, period in spans[i]:
                after = fewest[j + 1]
                for v, rest in subs[state]:
                    if period[v] <= limit and score[v] + after[rest] < b:
                        b = score[v] + after[rest]
            fewest[i][state] = b

    # Walk forward: of the moves that keep the least score, the lowest ranks, then the earlier cut.
    def take(v: int, state: int) -> tuple[int, ...]:
        ranks: list[int] = []
        for c, members in enumerate(classes):
            unused = members[len(members) - counts[state][c]:]
            ranks += unused[:counts[v][c]]
        return tuple(sorted(ranks))

    stages = []
    i, state = 0, full
    while i < L:
        ranks, j, state = min(
            (take(v, state), j, rest) for j, period in spans[i] for v, rest in subs[state]
            if period[v] <= limit and score[v] + fewest[j + 1][rest] == fewest[i][state])
        stages.append(Stage(tuple(range(i, j + 1)), ranks))
        i = j + 1
    plan = Plan(tuple(stages), world).validate()
    times = evaluate(p, plan)
    assert max(times) <= limit, (times, optimum)
    return Solution(plan, times, max(times))


def describe(solution: Solution, batch_size: int) -> str:
    """A table for the CLI: one row per stage, then the bottleneck, throughput and idle ranks."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: must be >= 1")
    b = solution.bottleneck
    rows = [("stage", "layers", "ranks", "replicas", "s/micro-batch", "of bottleneck")]
    for i, (s, t) in enumerate(zip(solution.plan.stages, solution.stage_times, strict=True)):
        rows.append((str(i), _span(s.layers), _list(s.ranks), str(s.replicas), f"{t:.4g}",
                     f"{t / b:.0%}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"bottleneck: {b:.4g} s per micro-batch, predicted "
                 f"{solution.samples_per_s(batch_size):,.0f} samples/s at batch size {batch_size}")
    idle = solution.plan.idle
    if idle:
        lines.append(f"idle ranks: {_list(idle)}")
    return "\n".join(lines)


def _period(worst: float, sync: float, r: int, sync_every: int) -> float:
    """Seconds per micro-batch of a stage whose slowest of r replicas needs ``worst`` seconds."""
    return (worst + sync / sync_every) / r


def _sync(p: Problem, layers: Sequence[int], r: int) -> float:
    """Seconds one replica spends on one sync with r - 1 peers."""
    if r <= 1:
        return 0.0
    nbytes = sum(p.sync_bytes[i] for i in layers) if p.sync_bytes else 0.0
    return (r - 1) * (p.latency + nbytes / p.bandwidth)


def _speeds(p: Problem) -> list[float]:
    return [1.0] * p.world if p.speed is None else p.speed


def _extras(p: Problem) -> list[float]:
    return [0.0] * p.world if p.extra is None else p.extra


def _check(p: Problem) -> None:
    if isinstance(p.world, bool) or not isinstance(p.world, int) or p.world < 1:
        raise ValueError(f"no ranks: world is {p.world!r}; the planner needs at least 1 rank")
    if not p.costs:
        raise ValueError("no layers: costs is empty; give one cost (seconds per micro-batch) "
                         "per layer")
    L = len(p.costs)
    for name, values, n, per, low in [
            ("costs", p.costs, L, "layer", "> 0"), ("speed", p.speed, p.world, "rank", "> 0"),
            ("extra", p.extra, p.world, "rank", ">= 0"),
            ("sync_bytes", p.sync_bytes, L, "layer", ">= 0"),
            ("memory", p.memory, L, "layer", ">= 0")]:
        if values is None:
            continue
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries but there are {n} "
                             f"{per}s; give one per {per}")
        for i, x in enumerate(values):
            if not math.isfinite(x) or not (x > 0 if low == "> 0" else x >= 0):
                raise ValueError(f"{name}[{i}] is {x!r}; each must be a finite number {low}")
    for name, x, low in [("bandwidth", p.bandwidth, "> 0"), ("latency", p.latency, ">= 0")]:
        if not math.isfinite(x) or not (x > 0 if low == "> 0" else x >= 0):
            raise ValueError(f"{name} is {x!r}; it must be a finite number {low}")
    if p.sync_every < 1:
        raise ValueError(f"sync_every is {p.sync_every}; replicas sync every n >= 1 micro-batches")
    if p.max_replicas is not None and p.max_replicas < 1:
        raise ValueError(f"max_replicas is {p.max_replicas}; it must be >= 1 (1 = no replicas)")
    if p.memory_cap is not None and not p.memory_cap > 0:
        raise ValueError(f"memory_cap is {p.memory_cap!r}; it must be > 0 bytes (None = no cap)")


def _check_memory(p: Problem) -> None:
    """Raise ValueError when no plan fits the ranks' memory, saying what would fit."""
    if p.memory is None or p.memory_cap is None:
        return
    cap = p.memory_cap
    for i, m in enumerate(p.memory):
        if m > cap:
            raise ValueError(
                f"layer {i} needs {m / MiB:.1f} MiB but a rank holds at most {cap / MiB:.1f} MiB "
                f"(memory_cap); give each rank more memory or make layer {i} smaller (fewer "
                "units, a smaller batch, fewer chains)")
    # Filling each rank as far as it goes makes the fewest contiguous groups.
    need, held = 1, 0.0
    for m in p.memory:
        if held + m > cap:
            need, held = need + 1, m
        else:
            held += m
    if need > p.world:
        raise ValueError(
            f"the {len(p.memory)} layers need {sum(p.memory) / MiB:.1f} MiB in all, at least "
            f"{need} ranks of {cap / MiB:.1f} MiB (memory_cap), but the world has {p.world}; "
            "start more ranks or give each rank more memory")
