"""The exact planner: the plan whose slowest stage is as fast as it can be.

Model. A stage is a contiguous group G of layers on a set R of r ranks. Micro-batch m of the
stream goes to replica ``m mod r``, so each replica sees every r-th micro-batch and the stage's
period (seconds per micro-batch through the stage) is, with ``w`` the slowest member's
``speed[k] * sum(costs[G]) + extra[k]`` and ``s = sync(G, R) / sync_every``,

    (w + s) / r            for ``bsp``, ``ssp`` and ``adaptive``
    max(w, s) / r          for ``bsp_delayed`` (tick c's all-reduce runs behind tick c + 1's work)

``sync(G, R)`` is 0 for r = 1. For ``bsp`` and ``bsp_delayed`` it is the all-reduce of the
layers' update (``cost.hierarchical_allreduce_s``): the ring ``2 (r - 1) (latency + n / (r
bandwidth))`` when R lies in one node, and the two-level all-reduce (reduce-scatter inside each
node, one ring per local rank across the nodes, all-gather) when it spans nodes. For ``ssp`` and
``adaptive`` it is the point-to-point exchange ``(r - 1) (latency + n / bandwidth)`` on the
slowest link among R. Rank k is on node ``k // node_size`` (no ``node_size``: one node). The
slowest replica sets the pace because replicas take micro-batches in turn. The pipeline's period
is the largest stage period (the bottleneck). A rank holding G needs ``sum(memory[G]) <=
memory_cap``. Ranks may stay idle.

Search. Ranks with equal (speed, extra, node) are interchangeable, so they form a *class* and a
stage is described by how many ranks it takes from each class. A dynamic programme over (first
layer of the next stage, ranks still unused per class) tries every contiguous grouping, every
replica count, every mix of classes and so every placement on the nodes, so its answer is exact.
A second pass over the same states, allowed only stages within a relative ``TIE`` of the
optimum, breaks ties: (1) the fewest extra replicas (sum of r - 1), (2) the fewest node
crossings (sum over stages of the nodes each spans, less one: a stage's replicas stay inside a
node when that is as fast), (3) the most stages, (4) the lowest ranks earliest (stage 0 gets the
lowest-numbered ranks that fit, then stage 1, ...), (5) the earlier cut. Within a class the
lowest-numbered unused ranks go to the earliest stage. When that search would exceed
``MAX_STEPS`` on a world of several nodes, ``solve_blocks`` (``blocks.py``) searches the plans whose
stages hold contiguous blocks of ranks instead (exact among those; ``Solution.search`` says
which search answered).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipedbn.balancer.blocks import search_blocks
from pipedbn.balancer.cost import alltoall_s, hierarchical_allreduce_s, leaders_allreduce_s
from pipedbn.balancer.plan import Plan, Stage, _list, _span

TIE = 1e-9  # plans within this relative margin of the optimal bottleneck count as equally fast
MAX_STEPS = 20_000_000  # a few seconds of pure Python; beyond it the search refuses to start
MiB = 2.0**20
SYNCS = ("bsp", "bsp_delayed", "ssp", "adaptive")
HIERARCHIES = ("shards", "leaders")


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
    """Per layer, bytes of its update (what a replica contributes to one sync). Default 0."""
    bandwidth: float = 1e9
    """Bytes per second of a link inside a node (of every link without ``node_size``)."""
    latency: float = 1e-4
    """Seconds per message on a link inside a node (every link without ``node_size``)."""
    sync_every: int = 1
    """A replica syncs once every ``sync_every`` of its own micro-batches."""
    memory: list[float] | None = None
    """Per layer, bytes a rank needs to hold it."""
    memory_cap: float | None = None
    """Bytes one rank can hold; None = unlimited."""
    max_replicas: int | None = None
    """Most ranks one stage may use; 1 = no replicas; None = no limit."""
    sync: str = "bsp"
    """How replicas sync (``SYNCS``), which sets the sync's price (module docstring)."""
    node_size: int | None = None
    """Ranks per node: rank k is on node ``k // node_size``; None: every rank on one node."""
    inter_bandwidth: float | None = None
    """Bytes per second of a link between nodes; None: ``bandwidth``."""
    inter_latency: float | None = None
    """Seconds per message on a link between nodes; None: ``latency``."""
    hierarchy: str = "shards"
    """The all-reduce of a stage spanning nodes: ``shards`` (one ring per local rank across the
    nodes, ``cost.hierarchical_allreduce_s``) or ``leaders`` (the nodes' first replicas only,
    ``cost.leaders_allreduce_s``)."""

    def node(self, rank: int) -> int:
        """The node of ``rank``."""
        return 0 if self.node_size is None else rank // self.node_size

    @property
    def inter(self) -> tuple[float, float]:
        """(latency, bandwidth) between nodes."""
        return (self.latency if self.inter_latency is None else self.inter_latency,
                self.bandwidth if self.inter_bandwidth is None else self.inter_bandwidth)

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class Solution:
    plan: Plan
    stage_times: list[float]
    """Each stage's period, seconds per micro-batch."""
    bottleneck: float
    """The largest stage period: the pipeline's seconds per micro-batch."""
    search: str = "exact"
    """``exact`` (every placement) or ``blocks`` (stages on contiguous blocks of ranks)."""

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
    return _period(p, worst, sync_s(p, layers, _per_node(p, ranks)), len(ranks))


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
    kinds: dict[tuple[float, float, int], list[int]] = {}
    for k in range(world):
        kinds.setdefault((speed[k], extra[k], p.node(k)), []).append(k)
    classes = list(kinds.values())  # ordered by their lowest rank; ranks ascending within
    sizes = [len(c) for c in classes]
    nodes = p.node(world - 1) + 1
    # Every (state, take) pair for each (first, last) layer of a later stage, and every take of
    # all ranks for each last layer of stage 0.
    steps = math.prod((n + 1) * (n + 2) // 2 for n in sizes) * L * (L - 1) // 2 \
        + math.prod(n + 1 for n in sizes) * L
    if steps > MAX_STEPS and nodes > 1:
        return solve_blocks(p)
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
    home = [p.node(c[0]) for c in classes]
    per_node = [tuple(sum(x for x, h in zip(cnt, home, strict=True) if h == n)
                      for n in range(nodes)) for cnt in counts]
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
            sync: dict[tuple[int, ...], float] = {}
            for where in per_node:
                if where not in sync:
                    sync[where] = sync_s(p, range(i, j + 1), where)
            spans[i].append((j, [
                _period(p, max(work[c] for c, x in enumerate(cnt) if x), sync[where], r)
                if 0 < r <= most else math.inf
                for cnt, r, where in zip(counts, size, per_node, strict=True)]))

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

    # Pass 2: fewest[i][state] = least (extra replicas, node crossings, -stages) of layers i..
    # among stages within the tie margin, as one integer: stages <= L and crossings < world, so
    # (L + 1) per crossing dominates the stages and (world + 1) crossings per extra replica.
    limit = optimum * (1 + TIE)
    score = [((r - 1) * (world + 1) + sum(1 for g in where if g) - 1) * (L + 1) - 1
             for r, where in zip(size, per_node, strict=True)]
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


def solve_blocks(problem: Problem) -> Solution:
    """The best plan whose stages hold contiguous blocks of ranks (``blocks``); what ``solve``
    answers when its exact search is too large for a world of several nodes."""
    p = problem
    _check(p)
    _check_memory(p)
    L = len(p.costs)
    speed, extra = _speeds(p), _extras(p)
    cap = math.inf if p.memory_cap is None else p.memory_cap
    memory = p.memory or [0.0] * L
    size = p.node_size or p.world
    syncs: dict[tuple[int, int, int, int, int, int], float] = {}

    def sync(i: int, j: int, a: int, r: int) -> float:
        """The sync of layers i..j on ranks a..a + r - 1: a partial node, whole ones, a partial."""
        first = min(r, size - a % size)
        m = 1 + -(-(r - first) // size)
        last = r - first - (m - 2) * size if m > 1 else first
        key = (i, j, r, m, max(first, last, size if m > 2 else 0), min(first, last))
        if key not in syncs:
            where = [first, *[size] * max(m - 2, 0), last][:m]
            syncs[key] = sync_s(p, range(i, j + 1), where)
        return syncs[key]

    def periods(i: int, j: int, a: int, n: int) -> list[float]:
        cost = sum(p.costs[i:j + 1])
        out, worst = [], 0.0
        for r in range(1, n + 1):
            k = a + r - 1
            worst = max(worst, speed[k] * cost + extra[k])
            out.append(_period(p, worst, sync(i, j, a, r), r))
        return out

    stages, optimum = search_blocks(
        L, p.world, periods, lambda i, j: sum(memory[i:j + 1]) <= cap,
        p.max_replicas or p.world, lambda a, r: p.node(a + r - 1) - p.node(a), TIE)
    plan = Plan(tuple(stages), p.world).validate()
    times = evaluate(p, plan)
    assert max(times) <= optimum * (1 + TIE), (times, optimum)
    return Solution(plan, times, max(times), "blocks")


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


def sync_s(p: Problem, layers: Sequence[int], per_node: Sequence[int]) -> float:
    """Seconds of one sync of a stage holding ``layers`` with ``per_node[n]`` replicas on node n
    (the collective of ``p.sync``; module docstring)."""
    nbytes = sum(p.sync_bytes[i] for i in layers) if p.sync_bytes else 0.0
    if p.sync in ("bsp", "bsp_delayed"):
        price = leaders_allreduce_s if p.hierarchy == "leaders" else hierarchical_allreduce_s
        return price(nbytes, per_node, (p.latency, p.bandwidth), p.inter)
    spans = sum(1 for g in per_node if g) > 1
    latency, bandwidth = p.inter if spans else (p.latency, p.bandwidth)
    return alltoall_s(nbytes, sum(per_node), latency, bandwidth)


def _per_node(p: Problem, ranks: Sequence[int]) -> list[int]:
    """How many of ``ranks`` each node holds."""
    counts = [0] * (p.node(p.world - 1) + 1)
    for k in ranks:
        counts[p.node(k)] += 1
    return counts


def _period(p: Problem, worst: float, sync: float, r: int) -> float:
    """Seconds per micro-batch of a stage whose slowest of r replicas needs ``worst`` seconds
    and whose sync takes ``sync`` seconds once every ``p.sync_every`` micro-batches."""
    if p.sync == "bsp_delayed":
        return max(worst, sync / p.sync_every) / r
    return (worst + sync / p.sync_every) / r


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
    inter_latency, inter_bandwidth = p.inter
    for name, x, low in [("bandwidth", p.bandwidth, "> 0"), ("latency", p.latency, ">= 0"),
                         ("inter_bandwidth", inter_bandwidth, "> 0"),
                         ("inter_latency", inter_latency, ">= 0")]:
        if not math.isfinite(x) or not (x > 0 if low == "> 0" else x >= 0):
            raise ValueError(f"{name} is {x!r}; it must be a finite number {low}")
    if p.hierarchy not in HIERARCHIES:
        raise ValueError(f"hierarchy is {p.hierarchy!r}; choose one of {', '.join(HIERARCHIES)}")
    if p.sync not in SYNCS:
        raise ValueError(f"sync is {p.sync!r}; choose one of {', '.join(SYNCS)}")
    if p.node_size is not None and (isinstance(p.node_size, bool)
                                    or not isinstance(p.node_size, int) or p.node_size < 1):
        raise ValueError(f"node_size is {p.node_size!r}; give ranks per node >= 1 (None: one "
                         "node)")
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
