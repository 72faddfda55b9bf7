"""One pipeline stage: receive a micro-batch, train this rank's layers on it, send it on.

    stage 0:        data (background prefetch) -> layer 0 -> send to stage 1
    stage s:        receive from stage s-1     -> layer s -> send to stage s+1
    the last stage: receive from its neighbour -> its layer; the stream ends there

    one process:    data (background prefetch) -> every layer, in order

A stage owns a contiguous run of layers (one, in the one-rank-per-layer plan; all of them in a
run in one process). It handles exactly the micro-batches that reach its first layer
(``Schedule.micro_batches``), in stream order, and checks each one it receives against that
list; it sends a micro-batch on only when a layer above it trains on it. Layers draw only from
their own generators, so the weights equal the sequential reference's bit for bit
(``tests/reference.py``). Everything else the stage does is a hook (``hooks.py``).

Timing: *compute* is the layers' work on a micro-batch (a straggler's sleep included: it stands
for a slower device), *receive-wait* the time spent waiting for the next micro-batch (from the
neighbour or from the data reader), *send-wait* the time spent handing it on (back-pressure).
The stage is *active* from the arrival of its first micro-batch to the end of its stream; the
wait before that is the schedule's own (a layer that starts later), not a pipeline bubble.
*busy* = compute / active. Beside these totals, each micro-batch's *cycle* (from the arrival of
the one before it to its own: the stage's period) and *step* (its compute) go into histograms
(``spread.py``), whose medians and 99th percentiles ``stages.json`` reports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from pipedbn.observe.monitor import Metrics
from pipedbn.pipeline.context import STREAM_END, Ending, MicroBatch, Role
from pipedbn.pipeline.hooks import Done, Hook
from pipedbn.pipeline.links import Outbox
from pipedbn.pipeline.spread import Spread
from pipedbn.pipeline.step import Compute
from pipedbn.pipeline.transport import PLAN


class Source(Protocol):
    """A stage's input: the data (``source.DataSource``) or the stage below (``links.Inbox``)."""

    def take(self, m: int) -> MicroBatch | None:
        """Micro-batch ``m``, or None if the input ended before it (see ``ending``)."""

    @property
    def ending(self) -> Ending:
        """How the input ended, after ``take`` returned None."""

    def finish(self) -> Ending:
        """After the last expected micro-batch: wait for the input's end."""


@dataclass
class StageStats:
    """One rank's timings over the whole run (its stage and layers: those of the last plan)."""

    rank: int
    stage: int | None
    layers: list[int]
    replica: int = 0
    micro_batches: int = 0
    samples: int = 0
    compute_s: float = 0.0
    recv_wait_s: float = 0.0
    send_wait_s: float = 0.0
    input_samples: int = 0
    """Samples this rank read from the data (while it ran a replica of the first stage)."""
    sync_wait_s: float = 0.0
    """Time spent exchanging updates with the other replicas of the stage."""
    monitor_s: float = 0.0
    """Time spent recording metrics, probes, images and histograms (part of compute)."""
    checkpoint_s: float = 0.0
    """Time spent writing this rank's checkpoint parts (part of compute or send-wait)."""
    active_s: float = 0.0
    segments: list[int] = field(default_factory=list)
    max_in_flight: int = 0
    """Most micro-batches this stage had sent that its successor had not yet taken."""
    sync_ticks: int = 0
    """Replica sync ticks (rounds) this rank took part in."""
    sync_messages: int = 0
    """Messages this rank handed out for them: point-to-point sends, or collectives."""
    sync_bytes: int = 0
    """Bytes of the tensors it handed to those sends or collectives."""
    cycles: Spread = field(default_factory=Spread, repr=False)
    """Each micro-batch's cycle: from the arrival of the one before it to its own."""
    steps: Spread = field(default_factory=Spread, repr=False)
    """Each micro-batch's step (its compute)."""

    @property
    def busy_frac(self) -> float:
        return self.compute_s / self.active_s if self.active_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.active_s if self.active_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["busy_frac"], out["samples_per_s"] = self.busy_frac, self.samples_per_s
        for name in ("cycle", "step"):
            spread = out.pop(name + "s")
            out[f"{name}_p50_s"], out[f"{name}_p99_s"] = (spread.quantile(0.5),
                                                          spread.quantile(0.99))
        return out


class _Interval:
    """Pipeline metrics over the micro-batches since the last record."""

    def __init__(self, start: float) -> None:
        self.start, self.compute, self.recv, self.send, self.samples, self.depth = \
            start, 0.0, 0.0, 0.0, 0, 0

    def record(self, metrics: Metrics, m: int, layer: int, now: float) -> float:
        """Writes the records; returns the busy fraction."""
        wall = max(now - self.start, 1e-9)
        metrics.scalars(m, layer, {
            "compute_s": self.compute, "recv_wait_s": self.recv, "send_wait_s": self.send,
            "busy_frac": self.compute / wall, "in_flight": self.depth, "wall_s": wall,
        }, "pipeline")
        metrics.scalar(m, layer, "throughput/samples_per_s", self.samples / wall)
        return self.compute / wall


@dataclass
class Stage:
    """One rank's stage in one segment: its role, its layers' work, where it trains and the
    run's timings it adds to."""

    role: Role
    compute: Compute
    device: torch.device
    stats: StageStats
    record_every: int | None
    """Micro-batches between ``pipeline/*`` records (None: monitoring off)."""


def run_stage(stage: Stage, source: Source, outbox: Outbox | None, hooks: Sequence[Hook]
              ) -> Ending:
    """Stream this replica's micro-batches of the segment through the stage's layers; adds the
    timings to ``stage.stats`` and returns how the segment ended."""
    role, stats, compute = stage.role, stage.stats, stage.compute
    schedule, metrics = compute.schedule, compute.metrics
    first, last = compute.layers[0].index, compute.layers[-1].index
    mine = role.micro_batches(schedule, first)
    interval: _Interval | None = None
    began = ended = arrived = time.perf_counter()
    end = STREAM_END
    exhausted = False  # every micro-batch of the segment handled (no re-plan cut it short)
    if first == 0 and outbox is not None:
        outbox.beat_if_quiet()  # the stream begins: the stages above switch to pipeline.timeout
    for hook in hooks:
        hook.start()
    for m in mine:
        stop = _points(hooks, m, stats)
        if stop is not None:
            end = Ending(PLAN, stop)
            break
        t_wait = time.perf_counter()
        taken = source.take(m)
        if taken is None:
            end = source.ending
            if not end.replans:  # the neighbour runs a different schedule: configs differ
                raise RuntimeError(f"stage {role.stage}: the stream ended before "
                                   f"micro-batch {m}")
            break
        t_got = time.perf_counter()
        if interval is None:
            began = t_got
            interval = _Interval(t_got)
        else:
            interval.recv += t_got - t_wait
            stats.recv_wait_s += t_got - t_wait
            stats.cycles.add(t_got - arrived)
        arrived = t_got
        labels = taken.labels.to(stage.device) if taken.labels is not None else None
        batch = MicroBatch(m, taken.x.to(stage.device, non_blocking=True), taken.probe, labels)
        rows = batch.rows
        batch, work = compute(batch, t_got)
        interval.compute += work.done - t_got
        stats.compute_s += work.done - t_got
        stats.steps.add(work.done - t_got)
        if outbox is not None:
            if schedule.top(m) > last:
                outbox.send(m, batch.x, batch.probe, batch.labels)
                interval.depth = max(interval.depth, outbox.in_flight)
            else:
                outbox.beat_if_quiet()
        ended = time.perf_counter()
        interval.send += ended - work.done
        stats.send_wait_s += ended - work.done
        stats.micro_batches += 1
        stats.samples += rows
        if role.stage == 0:
            stats.input_samples += rows
        interval.samples += rows
        busy = None
        if stage.record_every is not None and stats.micro_batches % stage.record_every == 0:
            busy = interval.record(metrics, m, first, ended)
            interval = _Interval(ended)
        done = Done(batch, work, stats.micro_batches, busy)
        for hook in hooks:
            hook.after(done)
    else:
        exhausted = True
    t0 = time.perf_counter()
    for hook in hooks:
        hook.end(end.stop_at(schedule.length))
    stats.sync_wait_s += time.perf_counter() - t0
    if exhausted:
        end = source.finish()
    t0 = time.perf_counter()
    if outbox is not None:
        outbox.close(end)
        stats.max_in_flight = max(stats.max_in_flight, outbox.max_in_flight)
    ended = time.perf_counter()
    stats.send_wait_s += ended - t0
    if interval is not None:
        interval.send += ended - t0
    if stage.record_every is not None and interval is not None and interval.samples:
        interval.record(metrics, end.stop_at(schedule.length), first, ended)
    stats.active_s += ended - began
    return end


def _points(hooks: Sequence[Hook], m: int, stats: StageStats) -> int | None:
    """Run the hooks' points at or before micro-batch ``m``, in stream order; the point where
    one stopped the segment, if one did."""
    while True:
        at, hook = min(((h.next_point(), h) for h in hooks), key=lambda p: p[0],
                       default=(float("inf"), None))
        if hook is None or at > m:
            return None
        t0 = time.perf_counter()
        stop = hook.at_point()
        stats.sync_wait_s += time.perf_counter() - t0
        if stop:
            return int(at)
