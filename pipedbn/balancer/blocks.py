"""The planner's search for worlds too large for the exact one: stages on contiguous blocks.

A *block plan* gives stage s the ranks ``a_s .. a_s + r_s - 1`` with ``a_0 < a_1 < ...`` and
the blocks disjoint (ranks between them stay idle), the layout of Megatron-LM's and torchtitan's
meshes: with ranks numbered node by node, a block fills whole nodes and at most one partial node
at each end. A dynamic programme over (first layer of the next stage, first rank still free)
tries every grouping, every block start and every block size, so the answer is the best block
plan, in ``O(L^2 world^2)`` period evaluations. Ties are broken as the exact planner's: the
fewest extra replicas, the fewest node crossings, the most stages, the lowest ranks earliest,
the earlier cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipedbn.balancer.plan import Stage

Periods = Callable[[int, int, int, int], list[float]]
"""``periods(i, j, a, n)``: seconds per micro-batch of layers i..j on ranks a..a + r - 1, for
r = 1..n."""


def search_blocks(layers: int, world: int, periods: Periods, fits: Callable[[int, int], bool],
                  most: int, crossings: Callable[[int, int], int], tie: float
                  ) -> tuple[list[Stage], float]:
    """The best block plan's stages and its bottleneck. ``fits(i, j)``: layers i..j fit one
    rank's memory; ``most``: ranks one stage may use; ``crossings(a, r)``: nodes the block
    spans, less one; ``tie``: the relative margin within which plans count as equally fast."""
    L, W = layers, world
    cache: dict[tuple[int, int], list[tuple[int, int, float]]] = {}

    def moves(i: int, a: int) -> list[tuple[int, int, float]]:
        """(last layer j, ranks r, period) of every stage i..j starting at rank a."""
        if (i, a) not in cache:
            out = []
            for j in range(i, L):
                if not fits(i, j):
                    break
                row = periods(i, j, a, min(most, W - a))
                out += [(j, r, t) for r, t in enumerate(row, 1)]
            cache[i, a] = out
        return cache[i, a]

    # Pass 1: best[i][a] = smallest bottleneck of layers i.. on ranks a.. (inf: cannot).
    best = [[math.inf] * (W + 1) for _ in range(L)] + [[0.0] * (W + 1)]
    for i in reversed(range(L)):
        for a in reversed(range(W)):
            b = best[i][a + 1]  # rank a idle
            for j, r, t in moves(i, a):
                y = best[j + 1][a + r]
                if t < b and y < b:
                    b = max(t, y)
            best[i][a] = b
    optimum = best[0][0]
    limit = optimum * (1 + tie)

    # Pass 2: the least (extra replicas, crossings, -stages) among stages within the margin.
    def score(a: int, r: int) -> int:
        return ((r - 1) * (W + 1) + crossings(a, r)) * (L + 1) - 1

    fewest = [[math.inf] * (W + 1) for _ in range(L)] + [[0.0] * (W + 1)]
    for i in reversed(range(L)):
        for a in reversed(range(W)):
            b = fewest[i][a + 1]
            for j, r, t in moves(i, a):
                if t <= limit and score(a, r) + fewest[j + 1][a + r] < b:
                    b = score(a, r) + fewest[j + 1][a + r]
            fewest[i][a] = b

    stages: list[Stage] = []
    i, a = 0, 0
    while i < L:
        target = fewest[i][a]
        ranks, j = min(
            (tuple(range(s, s + r)), j) for s in range(a, W) for j, r, t in moves(i, s)
            if t <= limit and score(s, r) + fewest[j + 1][s + r] == target)
        stages.append(Stage(tuple(range(i, j + 1)), ranks))
        i, a = j + 1, ranks[-1] + 1
    return stages, optimum
