"""Layer state at the start of a segment: each rank's layers when the run starts (fresh or from
the checkpoint), and the moves between ranks when the balancer re-plans."""

from __future__ import annotations

import numpy as np
import torch.distributed as dist

from pipedbn.balancer import Plan
from pipedbn.model.rbm import RBM
from pipedbn.pipeline.layers import make_layer
from pipedbn.pipeline.rank import RankRun
from pipedbn.pipeline.replicas import start_replica


def initial_layers(run: RankRun, plan: Plan) -> dict[int, RBM]:
    """This rank's layers at the first micro-batch: fresh, or from the checkpoint (its state
    is per layer, so any plan can take it; a replica beyond the first starts as after a
    re-plan, which is also what the uninterrupted run did at that checkpoint)."""
    role = plan.role(run.ctx.rank)
    if role is None:
        return {}
    setup, out = run.setup, {}
    for i in plan.stages[role[0]].layers:
        layer = make_layer(run.cfg, i, setup.features, run.schedule, run.ctx.device,
                           setup.mean() if i == 0 else None)
        if setup.checkpoint is not None:
            assert setup.run_dir is not None
            layer.load_state_dict(setup.checkpoint.load(setup.run_dir, i))
        if role[1] > 0:
            start_replica(layer, run.cfg.seed, role[1], setup.start_at)
        out[i] = layer
    return out


def move_layers(run: RankRun, old: Plan, new: Plan, held: dict[int, RBM], begin: int
                ) -> dict[int, RBM]:
    """Give every layer's state (weights, momentum, chains, generator, counters) to its owners
    under the new plan; every rank takes part. A layer's state is its first replica's (all
    replicas hold every update after the segment's final sync). New replicas beyond the first
    start with no velocity, so that the momentum carried over is counted once, and draw from a
    stream of their own."""
    rank, features = run.ctx.rank, run.setup.features
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
            layer = held.get(i) or make_layer(run.cfg, i, features, run.schedule, run.ctx.device,
                                              np.zeros(features, np.float32) if i == 0 else None)
            layer.load_state_dict(box[0])
            if role[1] > 0:
                start_replica(layer, run.cfg.seed, role[1], begin)
            out[i] = layer
    return out
