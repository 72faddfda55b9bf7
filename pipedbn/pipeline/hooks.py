"""The stage loop's side duties, each behind one small interface and each owning its cadence.

The loop (``runner.run_stage``) moves micro-batches and measures itself; everything else it
leaves to its hooks, which decide for themselves when they have something to do:

- ``start()`` once, before the segment's first micro-batch;
- ``next_point()``/``at_point()``: a hook that acts at *points* of the stream (a replica
  sync round, a re-plan check) names the next one; before micro-batch m the loop runs every
  point at or before m, smallest first (the hook listed first on a tie), so every replica of a
  stage meets them in the same order. ``at_point`` returns True to stop the segment there;
- ``after(done)`` once per micro-batch handled;
- ``end(stop_at)`` when the segment's stream is over (micro-batches from ``stop_at`` on belong
  to the next segment), before the loop waits for the end of its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipedbn.balancer.runtime import Reporter
from pipedbn.model.rbm import RBM
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.context import MicroBatch, Role
from pipedbn.pipeline.replicas import Rounds
from pipedbn.pipeline.step import Work
from pipedbn.run.checkpoint import Saver


@dataclass
class Done:
    """One micro-batch the stage has handled (and sent on)."""

    batch: MicroBatch
    work: Work
    count: int
    """Micro-batches this rank has handled over the run, this one included."""
    busy: float | None
    """The stage's busy fraction over the interval the loop has just recorded, if it did."""


class Hook:
    def start(self) -> None:
        pass

    def next_point(self) -> float:
        return math.inf

    def at_point(self) -> bool:
        return False

    def after(self, done: Done) -> None:
        pass

    def end(self, stop_at: int) -> None:
        pass


class ReplicaTicks(Hook):
    """A replicated stage's sync rounds (``replicas.py``); the first replica saves the stage's
    part of a checkpoint once the replicas have exchanged every update before it."""

    def __init__(self, sync: Rounds, layers: list[RBM], saver: Saver | None) -> None:
        self.sync, self.layers, self.saver = sync, layers, saver

    def next_point(self) -> float:
        return self.sync.next_boundary

    def at_point(self) -> bool:
        cut = self.sync.tick()
        if cut is not None and self.saver is not None:
            self.saver.save_upto(self.layers, cut)
        return False

    def after(self, done: Done) -> None:
        self.sync.handled += 1  # for the replica's speed at its next tick

    def end(self, stop_at: int) -> None:
        # before waiting for the input's end: a peer with micro-batches left may be waiting at
        # a round boundary that this replica, having none, would otherwise never reach
        for cut in self.sync.drain(stop_at):
            if self.saver is not None:
                self.saver.save_upto(self.layers, cut)
        self.sync.finish()


class ReplanChecks(Hook):
    """Stage 0's re-plan checks every ``check_every`` micro-batches: ``decide(q)`` says whether
    the run re-plans at micro-batch ``q * check_every``. Only where every replica of stage 0
    still has a micro-batch: all of them then meet the same checks and stop together."""

    def __init__(self, decide: Callable[[int], bool], role: Role, check_every: int,
                 last_check: int) -> None:
        self.decide, self.every, self.last = decide, check_every, last_check
        self.next = (role.begin // check_every + 1) * check_every

    def next_point(self) -> float:
        return self.next if self.next <= self.last else math.inf

    def at_point(self) -> bool:
        q, self.next = self.next // self.every, self.next + self.every
        return self.decide(q)


class Checkpoints(Hook):
    """An unreplicated stage's part of each checkpoint ``c``, written as soon as no micro-batch
    before ``c`` is left to it: right after its last one before ``c`` (a layer that trains
    later saves at once)."""

    def __init__(self, saver: Saver, layers: list[RBM], mine: list[int], length: int) -> None:
        self.saver, self.layers, self.length = saver, layers, length
        self.upcoming: Iterator[int] = iter(mine)

    def start(self) -> None:
        self.saver.save_upto(self.layers, next(self.upcoming, self.length))

    def after(self, done: Done) -> None:
        self.saver.save_upto(self.layers, next(self.upcoming, self.length))


class Reports(Hook):
    """The balancer's step-time reports (``balancer.replan``), twice per check."""

    def __init__(self, reporter: Reporter, check_every: int) -> None:
        self.reporter, self.every = reporter, check_every

    def after(self, done: Done) -> None:
        self.reporter.add(done.work.layer_s, done.work.extra_s)
        if self.reporter.count >= self.every // 2:
            self.reporter.publish()


class ShowProgress(Hook):
    """The progress display (``progress.py``), fed by the rank that shows it; every rank
    publishes its busy fraction with its pipeline records. In one process the display's
    bottleneck is the layer with the most compute since its last refresh."""

    def __init__(self, progress: Progress, role: Role, single: bool) -> None:
        self.progress, self.role = progress, role
        self.totals: dict[int, float] | None = {i: 0.0 for i in role.layers} if single else None

    def start(self) -> None:
        r = self.role
        self.progress.begin_segment(r.segment, r.stage, r.replica, r.replicas)

    def after(self, done: Done) -> None:
        per_layer = None
        if self.totals is not None:
            for i, s in done.work.layer_s.items():
                self.totals[i] += s
            per_layer = [self.totals[i] for i in sorted(self.totals)]
        self.progress.update(done.batch.m, done.batch.rows, per_layer)
        if done.busy is not None:
            self.progress.publish(self.role.stage, list(self.role.layers), done.busy)
