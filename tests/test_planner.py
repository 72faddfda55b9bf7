"""The exact planner against a brute force over every plan, on known and random small cases."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest

from pipedbn.balancer import (
    Plan,
    Problem,
    Solution,
    Stage,
    describe,
    evaluate,
    solve,
    solve_blocks,
    stage_time,
)
from pipedbn.balancer.planner import SYNCS

MiB = 2.0**20


def brute(p: Problem) -> tuple[float, Plan | None]:
    """Best bottleneck over every grouping and every assignment of each rank to a stage or to
    idle, and the plan the planner's tie-break should pick: fewest extra replicas, then fewest
    node crossings, then most stages, then per stage in order the lowest ranks and the earlier
    cut."""
    L = len(p.costs)
    times: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
    plans = []  # (bottleneck, stages)
    for cuts in itertools.product([False, True], repeat=L - 1):
        groups, start = [], 0
        for i, cut in enumerate([*cuts, True]):
            if cut:
                groups.append(tuple(range(start, i + 1)))
                start = i + 1
        if p.memory and p.memory_cap is not None and any(
                sum(p.memory[i] for i in g) > p.memory_cap for g in groups):
            continue
        for assign in itertools.product(range(len(groups) + 1), repeat=p.world):
            ranks = [tuple(k for k in range(p.world) if assign[k] == s)
                     for s in range(len(groups))]
            if any(not r or len(r) > (p.max_replicas or p.world) for r in ranks):
                continue
            t = 0.0
            for g, r in zip(groups, ranks, strict=True):
                if (g, r) not in times:
                    times[g, r] = stage_time(p, g, r)
                t = max(t, times[g, r])
            plans.append((t, list(zip(groups, ranks, strict=True))))
    if not plans:
        return math.inf, None
    best = min(t for t, _ in plans)

    def key(stages: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> tuple:
        extra = sum(len(r) - 1 for _, r in stages)
        crossings = sum(len({p.node(k) for k in r}) - 1 for _, r in stages)
        return extra, crossings, -len(stages), [(r, g[-1]) for g, r in stages]

    tied = min((key(s), s) for t, s in plans if t <= best * (1 + 1e-9))[1]
    return best, Plan(tuple(Stage(g, r) for g, r in tied), p.world)


def check(p: Problem, reference: tuple[float, Plan | None] | None = None) -> Solution:
    """Solve ``p``, check the answer against brute force and its own evaluation, return it."""
    s = solve(p)
    best, plan = reference or brute(p)
    assert s.bottleneck == pytest.approx(best, rel=1e-9)
    assert s.plan == plan
    assert s.plan.validate() is s.plan
    assert s.stage_times == evaluate(p, s.plan)
    assert s.bottleneck == max(s.stage_times)
    return s


@pytest.mark.parametrize("costs, world, kw, spec, bottleneck", [
    # layer 0 x2 (2 s) beside layers 1-2 (2 s); all on three ties but with 2 replicas more
    ([4, 1, 1], 3, {}, "0@0,1|1-2@2", 2),
    ([1, 1, 1, 1], 2, {}, "0-1@0|2-3@1", 2),  # all on both ties but adds a replica
    ([1, 2, 3], 1, {}, "0-2@0", 6),
    ([8, 1], 5, {}, "0-1@0-4", 1.8),  # 9 s over 5 ranks beats layer 0 x4 (2 s)
    ([8, 1], 5, {"max_replicas": 4}, "0@0-3|1@4", 2),
    ([1, 1, 1], 3, {}, "0@0|1@1|2@2", 1),
    ([4, 1], 2, {"speed": [3, 1]}, "0@1|1@0", 4),  # the slow rank gets the light layer
    ([1, 1], 3, {"speed": [1, 3, 1]}, "0@0|1@2", 1),  # ... or stays idle
    ([4], 3, {"speed": [1, 3, 1]}, "0@0,2", 2),  # x3 would be 12 / 3 = 4 s
    ([2, 2], 3, {"extra": [0, 0, 5]}, "0@0|1@1", 2),
])
def test_known_cases(costs, world, kw, spec, bottleneck):
    s = check(Problem(costs, world, latency=0.0, **kw))
    assert s.plan.spec() == spec
    assert s.bottleneck == pytest.approx(bottleneck, rel=1e-12)


def test_random_cases_match_brute_force():
    rng = random.Random(1234)
    for _ in range(200):
        L = rng.randint(1, 4)
        world = rng.randint(1, 6 if L <= 3 else 5)
        costs = [rng.choice([1.0, 2.0, 4.0]) if rng.random() < 0.5 else rng.uniform(0.1, 5)
                 for _ in range(L)]
        kw: dict = {}
        if rng.random() < 0.5:
            kw["speed"] = [rng.choice([1.0, 1.0, 2.0, 3.0]) for _ in range(world)]
        if rng.random() < 0.3:
            kw["extra"] = [rng.choice([0.0, 0.0, 0.5, 2.0]) for _ in range(world)]
        if rng.random() < 0.5:
            kw["sync_bytes"] = [rng.uniform(0, 2e9) for _ in range(L)]
            kw["sync_every"] = rng.choice([1, 2, 4])
        kw["latency"] = rng.choice([0.0, 1e-4, 0.3])
        if rng.random() < 0.3:
            kw["max_replicas"] = rng.randint(1, 3)
        if rng.random() < 0.3:
            kw["memory"] = [rng.uniform(1, 3) * MiB for _ in range(L)]
            kw["memory_cap"] = rng.uniform(2.5, 7) * MiB
        p = Problem(costs, world, **kw)
        reference = brute(p)
        if reference[1] is None:
            with pytest.raises(ValueError, match="MiB"):
                solve(p)
        else:
            check(p, reference)


def test_equal_costs_one_rank_per_layer():
    for L in range(1, 5):
        assert solve(Problem([1.0] * L, L)).plan.spec() == "|".join(f"{i}@{i}" for i in range(L))


def test_no_replica_when_it_does_not_lower_the_bottleneck():
    # one layer per rank fits in memory; a replica of any layer leaves the others at 1 s
    p = Problem([1.0] * 3, 5, memory=[MiB] * 3, memory_cap=MiB)
    s = check(p)
    assert s.plan.spec() == "0@0|1@1|2@2"
    assert s.plan.idle == (3, 4)
    # with at most 2 replicas, layers 0-1 on two ranks also take 1 s: the plan without wins
    assert check(Problem([1.0] * 3, 4, max_replicas=2)).plan.spec() == "0@0|1@1|2@2"


def test_large_sync_cost_stops_replication():
    cheap = solve(Problem([4, 1, 1], 3, latency=0.0))
    assert cheap.plan.stages[0].replicas == 2
    p = Problem([4, 1, 1], 3, latency=0.0, sync_bytes=[5e9, 0, 0], bandwidth=1e9)
    s = check(p)
    assert all(st.replicas == 1 for st in s.plan.stages)
    assert s.bottleneck == 4


def test_max_replicas_one_gives_no_replicas():
    s = check(Problem([8, 1, 1], 5, max_replicas=1))
    assert all(st.replicas == 1 for st in s.plan.stages)
    assert s.bottleneck == 8


def test_large_world_solves():
    s = solve(Problem([1, 2, 3, 4, 5, 6, 7, 8], 64))
    assert s.plan.layers == 8
    assert s.bottleneck == max(evaluate(Problem([1, 2, 3, 4, 5, 6, 7, 8], 64), s.plan))
    hetero = Problem([1, 2, 3, 4], 8, speed=[1 + k / 8 for k in range(8)],
                     extra=[0.01 * k for k in range(8)], sync_bytes=[1e6] * 4)
    assert solve(hetero).plan.validate()


def test_stage_time_and_describe():
    p = Problem([2, 1], 4, speed=[1, 1, 2, 1], extra=[0, 0, 0, 0.5], sync_bytes=[1e9, 3e9],
                bandwidth=1e9, latency=0.25, sync_every=2)
    assert stage_time(p, [0], [0]) == 2
    assert stage_time(p, [0, 1], [0]) == 3
    # worst member rank 2 (2 * 2 s), one ring all-reduce of 2 steps (0.25 s + 1e9 / 2 B at 1e9
    # B/s each) every 2 micro-batches
    assert stage_time(p, [0], [0, 2]) == pytest.approx((4 + 2 * 0.75 / 2) / 2)
    assert stage_time(p, [1], [1, 3, 0]) == pytest.approx((1.5 + 4 * (0.25 + 1) / 2) / 3)
    # ssp's point-to-point exchange: each update to each of the r - 1 peers
    ssp = dataclasses.replace(p, sync="ssp")
    assert stage_time(ssp, [0], [0, 2]) == pytest.approx((4 + 1.25 / 2) / 2)
    assert stage_time(ssp, [1], [1, 3, 0]) == pytest.approx((1.5 + 2 * 3.25 / 2) / 3)
    # bsp_delayed: the all-reduce runs behind the next round's work, max(work, sync) per round
    delayed = dataclasses.replace(p, sync="bsp_delayed")
    assert stage_time(delayed, [0], [0, 2]) == pytest.approx(4 / 2)
    assert stage_time(delayed, [1], [1, 3, 0]) == pytest.approx(4 * 1.25 / 2 / 3)
    with pytest.raises(ValueError, match="stage ranks"):
        stage_time(p, [0], [0, 0])
    with pytest.raises(ValueError, match="stage layers"):
        stage_time(p, [2], [0])
    s = solve(Problem([4, 1], 4, latency=0.0))
    text = describe(s, batch_size=100)
    assert "bottleneck" in text and "samples/s" in text
    assert s.samples_per_s(100) == pytest.approx(100 / s.bottleneck)
    with pytest.raises(ValueError, match="layers but the problem has"):
        evaluate(Problem([1.0], 2), Plan.parse("0|1", world=2, layers=2))


@pytest.mark.parametrize("make, match", [
    (lambda: Problem([1.0], 0), "no ranks"),
    (lambda: Problem([], 2), "no layers"),
    (lambda: Problem([1.0, 0.0], 2), r"costs\[1\] is 0.0"),
    (lambda: Problem([1.0, math.nan], 2), r"costs\[1\]"),
    (lambda: Problem([1.0, math.inf], 2), r"costs\[1\]"),
    (lambda: Problem([1.0], 2, speed=[1.0]), "speed has 1 entries but there are 2 ranks"),
    (lambda: Problem([1.0], 2, speed=[1.0, 0.0]), r"speed\[1\]"),
    (lambda: Problem([1.0], 2, extra=[0.0, -1.0]), r"extra\[1\]"),
    (lambda: Problem([1.0], 2, extra=[0.0]), "extra has 1 entries"),
    (lambda: Problem([1.0], 2, sync_bytes=[1.0, 2.0]), "sync_bytes has 2 entries"),
    (lambda: Problem([1.0], 2, memory=[1.0, 2.0]), "memory has 2 entries"),
    (lambda: Problem([1.0], 2, sync_every=0), "sync_every"),
    (lambda: Problem([1.0], 2, max_replicas=0), "max_replicas"),
    (lambda: Problem([1.0], 2, bandwidth=0.0), "bandwidth"),
    (lambda: Problem([1.0], 2, memory_cap=0.0), "memory_cap"),
    (lambda: solve(Problem([1.0, 1.0], 2, memory=[100 * MiB, 300 * MiB], memory_cap=256 * MiB)),
     r"layer 1 needs 300.0 MiB but a rank holds at most 256.0 MiB .*more memory"),
    (lambda: solve(Problem([1.0] * 3, 2, memory=[200 * MiB] * 3, memory_cap=256 * MiB)),
     r"600.0 MiB in all, at least 3 ranks of 256.0 MiB .* world has 2"),
    (lambda: solve(Problem([1.0] * 4, 16, speed=[1 + k / 16 for k in range(16)])),
     "round speed and extra"),
])
def test_bad_inputs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- topology: nodes, two link classes, the sync's collective ----------------------------------

def test_random_topology_cases_match_brute_force():
    rng = random.Random(18)
    for _ in range(150):
        L = rng.randint(1, 3)
        world = rng.randint(2, 6)
        costs = [rng.uniform(0.2, 4) for _ in range(L)]
        kw: dict = {"node_size": rng.choice([1, 2, 3]), "sync": rng.choice(SYNCS),
                    "sync_bytes": [rng.uniform(0, 3e9) for _ in range(L)],
                    "latency": rng.choice([0.0, 1e-3]), "bandwidth": rng.choice([1e9, 1e10]),
                    "inter_bandwidth": rng.choice([None, 1e8, 1e9]),
                    "inter_latency": rng.choice([None, 0.0, 0.05]),
                    "sync_every": rng.choice([1, 2])}
        if rng.random() < 0.3:
            kw["speed"] = [rng.choice([1.0, 2.0]) for _ in range(world)]
        if rng.random() < 0.3 and world >= L:
            kw["memory"] = [MiB] * L
            kw["memory_cap"] = MiB
        check(Problem(costs, world, **kw))


def test_replicas_stay_inside_a_node_when_that_is_as_fast():
    # two layers of 2 s that cannot share a rank, 5 ranks on nodes {0,1,2} {3,4}, a free sync:
    # 2 replicas each give 1 s; the lowest ranks (0,1 | 2,3) would split stage 1 over two nodes
    free = dict(memory=[MiB] * 2, memory_cap=MiB, node_size=3, latency=0.0, bandwidth=1e30)
    s = check(Problem([2.0, 2.0], 5, **free))
    assert s.plan.spec() == "0@0,1|1@3,4"
    assert s.bottleneck == 1.0
    # without nodes the old order stands
    assert solve(Problem([2.0, 2.0], 5, memory=[MiB] * 2, memory_cap=MiB, latency=0.0)
                 ).plan.spec() == "0@0,1|1@2,3"


def test_a_slow_inter_node_link_keeps_the_sync_inside_nodes():
    # one 4 s layer, 4 ranks on two nodes of 2; a 1 GB update: 10 GB/s inside, 0.1 GB/s between
    p = Problem([4.0], 4, sync_bytes=[1e9], bandwidth=1e10, latency=0.0, node_size=2,
                inter_bandwidth=1e8)
    s = check(p)
    assert s.plan.spec() == "0@0,1"  # 2 replicas: (4 + 2 x 0.05) / 2 = 2.05 s
    assert s.bottleneck == pytest.approx((4 + 0.1) / 2)
    # four across both nodes would pay 2 (m - 1) x 1e9 / (2 x 2 x 1e8) = 5 s of slow link
    assert stage_time(p, [0], [0, 1, 2, 3]) == pytest.approx((4 + 2 * 0.5e9 / 2e10 * 2 + 5) / 4)
    # a pipeline boundary may cross nodes: two layers, one stage per node
    two = check(Problem([4.0, 4.0], 4, sync_bytes=[1e9, 1e9], bandwidth=1e10, latency=0.0,
                        node_size=2, inter_bandwidth=1e8))
    assert two.plan.spec() == "0@0,1|1@2,3"


def test_delayed_sync_hides_the_all_reduce_behind_the_work():
    p = Problem([4.0], 4, sync_bytes=[1e9], bandwidth=1e9, latency=0.0)
    ring = 2 * 3 * 1e9 / (4 * 1e9)  # 1.5 s
    assert solve(p).bottleneck == pytest.approx((4 + ring) / 4)
    assert solve(dataclasses.replace(p, sync="bsp_delayed")).bottleneck == pytest.approx(1.0)


def blocks_brute(p: Problem) -> float:
    """Best bottleneck over every block plan: a grouping, and ascending disjoint rank blocks."""
    L, best = len(p.costs), math.inf
    for cuts in itertools.product([False, True], repeat=L - 1):
        groups, start = [], 0
        for i, cut in enumerate([*cuts, True]):
            if cut:
                groups.append(tuple(range(start, i + 1)))
                start = i + 1
        # a block is (start, end) with start < end; the next starts at or after the end
        for bounds in itertools.combinations_with_replacement(range(p.world + 1),
                                                              2 * len(groups)):
            blocks = [tuple(range(bounds[2 * s], bounds[2 * s + 1])) for s in range(len(groups))]
            if any(not b or len(b) > (p.max_replicas or p.world) for b in blocks):
                continue
            best = min(best, max(stage_time(p, g, b) for g, b in zip(groups, blocks,
                                                                       strict=True)))
    return best


def test_block_search_is_exact_among_block_plans():
    rng = random.Random(7)
    for _ in range(60):
        L = rng.randint(1, 3)
        world = rng.randint(2, 7)
        p = Problem([rng.uniform(0.2, 4) for _ in range(L)], world,
                    speed=[rng.choice([1.0, 1.0, 2.0]) for _ in range(world)],
                    sync_bytes=[rng.uniform(0, 3e9) for _ in range(L)], latency=1e-3,
                    node_size=rng.choice([1, 2, 3]), inter_bandwidth=rng.choice([1e8, 1e9]),
                    sync=rng.choice(SYNCS), max_replicas=rng.choice([None, 2]))
        s = solve_blocks(p)
        assert s.search == "blocks"
        assert s.bottleneck == pytest.approx(blocks_brute(p), rel=1e-9)
        assert s.stage_times == evaluate(p, s.plan)
        assert solve(p).bottleneck <= s.bottleneck * (1 + 1e-9)  # every block plan is a plan


def test_many_nodes_fall_back_to_blocks_and_keep_stages_on_whole_nodes():
    # the projections' DBN on 8 nodes of 8 GPUs (docs/simulate.md)
    costs = [0.52e-3, 1.33e-3, 1.33e-3, 1.33e-3]
    nbytes = [4.0 * (784 * 2000 + 2784), *[4.0 * (2000 * 2000 + 4000)] * 3]
    p = Problem(costs, 64, sync_bytes=nbytes, bandwidth=300e9, latency=8e-6, node_size=8,
                inter_bandwidth=25e9, inter_latency=15e-6, sync="bsp_delayed")
    s = solve(p)
    assert s.search == "blocks"
    assert s.plan.spec() == "0-3@0-63"
    assert s.bottleneck == pytest.approx(sum(costs) / 64)
