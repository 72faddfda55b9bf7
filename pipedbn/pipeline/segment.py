"""One segment of a rank's run: its stage of the plan, wired up (input, output, replica sync,
checkpoints, re-plan checks, reports, progress) and run through the stage loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from pipedbn.balancer.runtime import Coordinator, Reporter, get, put
from pipedbn.data.loader import Prefetcher
from pipedbn.data.prepare import run_data
from pipedbn.model.rbm import RBM
from pipedbn.pipeline.collectives import StageGroups
from pipedbn.pipeline.context import Ending, Role
from pipedbn.pipeline.hooks import (
    Checkpoints,
    Hook,
    ReplanChecks,
    ReplicaTicks,
    Reports,
    ShowProgress,
)
from pipedbn.pipeline.links import Inbox, Outbox
from pipedbn.pipeline.rank import RankRun
from pipedbn.pipeline.replicas import Rounds, RoundsSetup, round_boundaries
from pipedbn.pipeline.runner import Source, Stage, run_stage
from pipedbn.pipeline.source import DataSource, held_probe
from pipedbn.pipeline.step import Compute, Straggler, Watch
from pipedbn.pipeline.sync_allreduce import AllReduceSync
from pipedbn.pipeline.sync_p2p import PeerSync
from pipedbn.run.checkpoint import Saver, boundaries


def graded_timeouts(timeout: float, rank: int, world: int) -> tuple[float, float]:
    """(send, receive) timeouts of a stage. When a stage hangs, the stages below it block on
    their sends (back-pressure) and the stages above it starve; each of them would blame its own
    neighbour. Waits grow by a quarter of the timeout per hop away from the hang's neighbours
    (sends towards stage 0, receives towards the last stage), so the hung stage's own neighbours
    give up first and name it in ``failure.json``."""
    send_hops = max(0, world - 2 - rank)
    recv_hops = max(0, rank - 1)
    return timeout * (1 + send_hops / 4), timeout * (1 + recv_hops / 4)


def run_segment(run: RankRun, role: Role, held: dict[int, RBM],
                groups: dict[int, StageGroups] | None = None) -> Ending:
    """This rank's stage of ``role.plan`` from ``role.begin`` until the stream ends or the run
    re-plans; ``groups``: the replicated stages' process groups (``collectives.make_groups``)."""
    cfg, ctx, schedule = run.cfg, run.ctx, run.schedule
    plan, stage = role.plan, role.plan.stages[role.stage]
    layers = [held[i] for i in stage.layers]
    sizes = [run.setup.features] + cfg.sizes
    pl, b = cfg.pipeline, cfg.balancer
    send_timeout, recv_timeout = graded_timeouts(ctx.timeout, role.stage, len(plan.stages))
    first, last = stage.layers[0], stage.layers[-1]
    rows = cfg.train.batch_size
    labelled = cfg.labels is not None  # each micro-batch carries its labels up (links.py)
    outbox = (Outbox(role, ctx, (rows, sizes[last + 1]), pl.window, send_timeout, labelled)
              if role.stage + 1 < len(plan.stages) else None)
    saver = (Saver(run.setup.run_dir, cfg, schedule, role.begin, finalizer=ctx.rank == 0)
             if role.replica == 0 else None)
    replan = b.replan and run.kv is not None  # (one process has no other plan)
    hooks: list[Hook] = []
    if stage.replicas > 1:
        trained = [m for m in schedule.micro_batches(first, role.begin)
                   if any(schedule.trains(i, m) for i in stage.layers)]
        cuts = [c for c in boundaries(cfg.checkpoint.every, schedule.length) if c > role.begin]
        ticks, cut_set = round_boundaries(trained, b.sync_every * stage.replicas, cuts)
        setup = RoundsSetup(layers, role.replica, ticks, cfg=b, timeout=ctx.timeout,
                            name=role.name, metrics=run.metrics, cuts=cut_set, seed=cfg.seed,
                            tb_every=cfg.monitor.scalars_every)
        sync: Rounds
        if groups is not None and role.stage in groups:
            sync = AllReduceSync(setup, groups[role.stage], run.kv,
                                 f"sync-lost/{role.segment}/{role.stage}")
        else:
            sync = PeerSync(setup, stage.ranks)
        hooks.append(ReplicaTicks(sync, layers, saver))
    watch = Watch.of(cfg)
    source: Source
    if role.stage == 0:
        data = run.data
        if data is None:  # a replica of stage 0 on another rank reads the data too
            data = run_data(cfg, run.setup.run_dir, values=False)  # trusted: the manifest
        positions = [(m, *schedule.data_position(m)) for m in role.micro_batches(schedule, 0)]
        reader = Prefetcher(data, positions, cfg.data.prefetch, ctx.dtype,
                            timeout=ctx.setup_timeout)
        source = DataSource(reader, held_probe(cfg, data, ctx.device), watch.is_probe,
                            role.stage)
        if replan:
            # checks only where every replica of stage 0 still has a micro-batch
            last_check = min(max(role.micro_batches(schedule, first, j), default=-1)
                             for j in range(role.replicas))
            hooks.append(ReplanChecks(_decider(run, role), role, b.check_every, last_check))
    else:
        source = Inbox(role, ctx, (rows, sizes[first]), recv_timeout,
                       on_beat=outbox.beat_if_quiet if outbox is not None else None,
                       labelled=labelled)
    hooks.append(ShowProgress(run.progress, role, single=run.kv is None))
    if replan:
        hooks.append(Reports(Reporter(run.kv, ctx.rank, role.segment), b.check_every))
    if saver is not None and stage.replicas == 1:  # (a replicated stage saves at its ticks)
        hooks.append(Checkpoints(saver, layers, role.micro_batches(schedule, first),
                                 schedule.length))
    straggler = Straggler(cfg, ctx.rank if run.kv is not None else None, run.metrics)
    compute = Compute(layers, schedule, watch, run.metrics, straggler, role.replicas)
    record_every = cfg.monitor.scalars_every if cfg.monitor.enabled else None
    run.stats.segments.append(role.segment)
    try:
        end = run_stage(Stage(role, compute, ctx.device, run.stats, record_every), source,
                        outbox, hooks)
        if saver is not None:
            saver.close()  # a background write's error is this segment's
        if stage.replicas > 1:
            run.stats.sync_ticks += sync.clock
            run.stats.sync_messages += sync.messages
            run.stats.sync_bytes += sync.bytes
        return end
    finally:
        if saver is not None:
            with contextlib.suppress(Exception):  # (the error in flight is the one to report)
                saver.close()
            run.stats.checkpoint_s += saver.seconds
        if isinstance(source, DataSource):
            source.close()


def _decider(run: RankRun, role: Role) -> Callable[[int], bool]:
    """Stage 0's answer at check ``q``: the coordinator decides and writes the decision; the
    other replicas of stage 0 read it, so all of them stop at the same micro-batch."""
    kv, every, timeout = run.kv, run.cfg.balancer.check_every, run.ctx.timeout
    assert kv is not None and run.setup.problem is not None
    coordinator = (Coordinator(run.cfg, kv, role.plan, run.setup.problem, role.segment,
                               run.metrics, run.schedule.length)
                   if role.replica == 0 else None)

    def decide(q: int) -> bool:
        if coordinator is not None:
            new = coordinator.decide(q, q * every)
            if new is not None:
                put(kv, f"segment/{role.segment}", {"at": q * every, "plan": new.to_dict()})
            return new is not None
        return bool(get(kv, f"decision/{q}", timeout)["replan"])

    return decide
