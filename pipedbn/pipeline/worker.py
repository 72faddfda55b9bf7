"""One rank's whole run, the same code for every run: rank 0 opens it (fresh layers, their first
evaluation, the config and the plan in the records), then every rank runs its stage of each
plan's segment (``segment.py``) until the stream ends; after a re-plan the layers' state moves
between ranks (``moves.py``); a rank the plan leaves idle waits for the segment's end. Each
layer's final owner saves its final state. With ``bsp`` or ``bsp_delayed`` every rank makes each
plan's replica process groups at the start of its segment (``collectives.py``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipedbn.balancer import Plan
from pipedbn.balancer.runtime import get, get_forever, put
from pipedbn.config import dump_yaml
from pipedbn.model.rbm import RBM
from pipedbn.pipeline.collectives import StageGroups, destroy_groups, make_groups, node_ids
from pipedbn.pipeline.context import Ending, Role
from pipedbn.pipeline.finish import Opening, open_run
from pipedbn.pipeline.moves import initial_layers, move_layers
from pipedbn.pipeline.rank import RankRun
from pipedbn.pipeline.segment import run_segment
from pipedbn.run.checkpoint import Saver

log = logging.getLogger("pipedbn")

COLLECTIVE = ("bsp", "bsp_delayed")
"""The sync policies that run on the replicated stages' own process groups."""


def open_rank0(run: RankRun) -> Opening:
    """Rank 0's start: the schedule and plan in the log and the records, and the layers'
    first evaluation."""
    assert run.data is not None and run.setup.plan is not None
    start_at, plan = run.setup.start_at, run.setup.plan
    log.info("%s", run.schedule.describe())
    opening = open_run(run.cfg, run.data, run.schedule, run.ctx.device, run.metrics, start_at)
    if run.ctx.world > 1:
        log.info("plan: %s", plan.describe())
    if start_at == 0:
        run.metrics.event(0, -1, "config", {}, text=_code(dump_yaml(run.cfg)))
    how = f"resumed at micro-batch {start_at}:\n" if run.setup.resumed else ""
    _plan_event(run, plan, start_at, how)
    return opening


@dataclass(frozen=True)
class _Next:
    """What follows a segment, for every rank: a new plan from micro-batch ``at``, or
    nothing (``plan`` None: the stream is over)."""

    plan: Plan | None
    at: int = -1

    @classmethod
    def read(cls, d: dict[str, Any]) -> _Next:  # as the store holds it
        return cls(None) if d.get("end") else cls(Plan.from_dict(d["plan"]), int(d["at"]))


def train(run: RankRun) -> dict[int, RBM]:
    """This rank's part of the stream, one segment (plan) after another; returns the layers it
    holds at the end (their owners have saved their final states)."""
    rank, schedule = run.ctx.rank, run.schedule
    plan = run.setup.plan
    assert plan is not None
    held = initial_layers(run, plan)
    segment, begin = 0, run.setup.start_at
    collective = run.kv is not None and run.cfg.balancer.sync in COLLECTIVE
    nodes = node_ids() if collective else []
    while True:
        groups = make_groups(plan, nodes, run.ctx.timeout) if collective else None
        after = _segment(run, plan, segment, begin, held, groups)
        if groups is not None:
            destroy_groups(groups)
        if after.plan is None:
            break
        run.metrics.flush()  # a layer's next records may come from another rank
        run.metrics.purge_step = None  # later writers must keep this attempt's records
        held = move_layers(run, plan, after.plan, held, after.at)
        plan, segment, begin = after.plan, segment + 1, after.at
        if rank == 0:
            log.info("re-planned at micro-batch %d: %s", begin, plan.describe())
            _plan_event(run, plan, begin, f"re-planned at micro-batch {begin}:\n")
    final = Saver(run.setup.run_dir, run.cfg, schedule, schedule.length)
    for i, layer in held.items():
        if plan.owner(i) == rank:
            final.save(layer, schedule.length)
    final.close()
    role = plan.role(rank)
    run.stats.stage, run.stats.replica = role if role is not None else (None, 0)
    run.stats.monitor_s = run.metrics.seconds
    run.stats.layers = sorted(held)
    return held


def _segment(run: RankRun, plan: Plan, segment: int, begin: int, held: dict[int, RBM],
             groups: dict[int, StageGroups] | None) -> _Next:
    """This rank's part of ``segment`` (``plan`` from micro-batch ``begin``), and what follows
    it."""
    key, kv = f"segment/{segment}", run.kv
    role_of = plan.role(run.ctx.rank)
    if role_of is None:
        assert kv is not None
        return _Next.read(get_forever(kv, key))
    role = Role(plan, role_of[0], role_of[1], segment, begin)
    run.metrics.use(list(role.layers), role.replica)
    end: Ending = run_segment(run, role, held, groups)
    stop = end.stop_at(run.schedule.length)
    for i, layer in held.items():  # a replica saw only some of the updates
        layer.step = max(0, min(stop, run.schedule.ends[i]) - run.schedule.starts[i])
    if not end.replans:
        if kv is not None and run.ctx.rank == plan.owner(0):
            put(kv, key, {"end": True})
        return _Next(None)
    assert kv is not None
    return _Next.read(get(kv, key, run.ctx.timeout))


def _plan_event(run: RankRun, plan: Plan, at: int, how: str) -> None:
    run.metrics.event(at, 0, "balancer/plan",
                      {"at": at, "plan": plan.describe(), "spec": plan.spec()},
                      text=_code(how + plan.describe()))


def _code(text: str) -> str:
    """Text that TensorBoard's markdown shows as written."""
    return "\n".join("    " + line for line in text.splitlines())
