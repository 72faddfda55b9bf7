"""Which ranks run which layers: the cost model, the plan and the exact planner.

Pure Python (no torch): ``cost`` counts FLOPs and bytes of a layer, ``plan`` is the layer-to-rank
map with its string and dict forms, ``planner`` finds the plan with the smallest bottleneck.
"""

from pipedbn.balancer.cost import cd_flops, forward_flops, param_count, state_bytes
from pipedbn.balancer.plan import Plan, Stage, one_per_layer
from pipedbn.balancer.planner import (
    Problem,
    Solution,
    describe,
    evaluate,
    solve,
    solve_blocks,
    stage_time,
    sync_s,
)

__all__ = [
    "Plan",
    "Problem",
    "Solution",
    "Stage",
    "cd_flops",
    "describe",
    "evaluate",
    "forward_flops",
    "one_per_layer",
    "param_count",
    "solve",
    "solve_blocks",
    "stage_time",
    "state_bytes",
    "sync_s",
]
