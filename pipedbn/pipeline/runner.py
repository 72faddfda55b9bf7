"""One pipeline stage: receive a micro-batch, train this rank's layers on it, send it on.

    stage 0:        data (background prefetch) -> layer 0 -> send to stage 1
    stage s:        receive from stage s-1     -> layer s -> send to stage s+1
    the last stage: receive from its neighbour -> its layer; the stream ends there

A stage owns a contiguous run of layers (one, in the one-rank-per-layer plan). It handles exactly
the micro-batches that reach its first layer (``Schedule.micro_batches``), in stream order, and
checks each one it receives against that list; it sends a micro-batch on only when a layer above
it trains on it. Layers draw only from their own generators, so the weights equal the in-process
trainer's bit for bit (see ``trainer.py``).

Timing: *compute* is the layers' work on a micro-batch (a straggler's sleep included: it stands
for a slower device), *receive-wait* the time spent waiting for the next micro-batch (from the
neighbour or from the data reader), *send-wait* the time spent handing it on (back-pressure).
The stage is *active* from the arrival of its first micro-batch to the end of its stream; the
wait before that is the schedule's own (a layer that starts later), not a pipeline bubble.
*busy* = compute / active.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from pipedbn.balancer import Plan
from pipedbn.balancer.runtime import Reporter
from pipedbn.config import Config
from pipedbn.model.rbm import RBM
from pipedbn.observe.monitor import Metrics
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.links import Inbox, Outbox
from pipedbn.pipeline.replicas import ReplicaSync
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.trainer import Straggler, is_probe, layer_step
from pipedbn.pipeline.transport import END, PLAN
from pipedbn.run.checkpoint import Saver


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

    @property
    def busy_frac(self) -> float:
        return self.compute_s / self.active_s if self.active_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.active_s if self.active_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["busy_frac"], out["samples_per_s"] = self.busy_frac, self.samples_per_s
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
class Role:
    """What one rank does in one part of the stream (a *segment*: from micro-batch ``begin`` to
    the end of the stream or to the next re-plan)."""

    plan: Plan
    stage: int
    replica: int
    segment: int
    begin: int

    @property
    def replicas(self) -> int:
        return self.plan.stages[self.stage].replicas

    def micro_batches(self, schedule: Schedule, first: int, replica: int | None = None
                      ) -> list[int]:
        """The micro-batches this replica (or another of the stage) handles, in order."""
        r, j = self.replicas, self.replica if replica is None else replica
        return [m for m in schedule.micro_batches(first, self.begin) if m % r == j]


def run_stage(cfg: Config, rank: int, role: Role, layers: list[RBM], schedule: Schedule,
              source: Iterable[tuple[int, torch.Tensor]] | Inbox, outbox: Outbox | None,
              sync: ReplicaSync | None, metrics: Metrics, device: torch.device,
              stats: StageStats, decide: Callable[[int], bool] | None = None,
              reporter: Reporter | None = None, probe_samples: torch.Tensor | None = None,
              progress: Progress | None = None, saver: Saver | None = None) -> tuple[int, int]:
    """Stream this replica's micro-batches of the segment through ``layers``; adds the timings
    to ``stats`` and returns how the segment ended: ``(END, -1)`` or ``(PLAN, m)``.

    ``source`` is the data (stage 0) or the ``Inbox`` from the stage below. ``decide(q)`` (stage
    0 with re-planning on) says whether the run re-plans at micro-batch ``q * check_every``.
    ``probe_samples``: stage 0's held-out probe (``probe.py``); ``progress``: the display.

    ``saver`` (the stage's first replica) writes the stage's part of each checkpoint ``c`` as
    soon as no micro-batch before ``c`` is left to it: right after its last micro-batch before
    ``c`` (a layer that trains later saves at once), or, for a replicated stage, once its
    replicas have exchanged every update before ``c`` (``ReplicaSync``)."""
    first, last = layers[0].index, layers[-1].index
    straggler = Straggler(cfg, rank=rank, metrics=metrics)
    check_every = cfg.balancer.check_every
    mine = role.micro_batches(schedule, first)
    reads = iter(source) if not isinstance(source, Inbox) else None
    interval: _Interval | None = None
    began = ended = time.perf_counter()
    end: tuple[int, int] = (END, -1)
    exhausted = False  # every micro-batch of the segment handled (no re-plan cut it short)
    next_check = (role.begin // check_every + 1) * check_every
    # checks only where every replica of stage 0 still has a micro-batch: all of them then meet
    # the same checks and stop together at a re-plan
    last_check = -1
    if decide is not None:
        last_check = min(max(role.micro_batches(schedule, first, j), default=-1)
                         for j in range(role.replicas))
    record_every = cfg.monitor.scalars_every if cfg.monitor.enabled else None
    if progress is not None:
        progress.begin_segment(role.segment, role.stage, role.replica, role.replicas)
    if first == 0 and outbox is not None:
        outbox.beat_if_quiet()  # the stream begins: the stages above switch to pipeline.timeout
    lookahead = saver if sync is None else None  # (a replicated stage saves at its ticks)
    if lookahead is not None:
        lookahead.save_upto(layers, mine[0] if mine else schedule.length)
    for idx, m in enumerate(mine):
        # the boundaries passed before m, in stream order: every replica meets them in the
        # same order, so a replica waiting at one never holds back one its peers wait at
        stop = False
        while not stop:
            tick = sync.next_boundary if sync is not None else math.inf
            check = next_check if decide is not None and next_check <= last_check else math.inf
            if min(tick, check) > m:
                break
            t0 = time.perf_counter()
            if tick <= check:
                assert sync is not None
                cut = sync.tick()
                if cut is not None and saver is not None:
                    saver.save_upto(layers, cut)
            else:
                assert decide is not None
                q, next_check = next_check // check_every, next_check + check_every
                stop = decide(q)
            stats.sync_wait_s += time.perf_counter() - t0
        if stop:
            end = (PLAN, (next_check - check_every))
            break
        if sync is not None:
            sync.handled += 1  # its boundaries up to m are behind it (above)
        t_wait = time.perf_counter()
        if reads is not None:
            got, x = next(reads)
            if got != m:
                raise RuntimeError(f"stage {role.stage}: read micro-batch {got}, expected {m}")
        else:
            assert isinstance(source, Inbox)
            taken = source.take(m)
            if taken is None:
                end = (source.end_kind, source.end_at)
                if end[0] == END:  # the neighbour runs a different schedule: configs differ
                    raise RuntimeError(f"stage {role.stage}: the stream ended before "
                                       f"micro-batch {m}")
                break
            x = taken
        t_got = time.perf_counter()
        if interval is None:
            began = t_got
            interval = _Interval(t_got)
        else:
            interval.recv += t_got - t_wait
            stats.recv_wait_s += t_got - t_wait
        x = x.to(device, non_blocking=True)
        if reads is not None:
            probe = probe_samples if probe_samples is not None and is_probe(cfg, m) else None
        else:
            assert isinstance(source, Inbox)
            probe = source.probe
        rows = x.shape[0]
        top = schedule.top(m)
        layer_s: dict[int, float] = {}
        t_layer = t_got
        for layer in layers:
            if layer.index > top:
                break
            monitoring = metrics.seconds
            x, probe = layer_step(layer, x, m, schedule, cfg, metrics, probe, role.replicas)
            straggler.after_layer(layer.index, m)
            now = time.perf_counter()
            # the balancer plans with the layer's own cost, not the monitoring's spikes
            layer_s[layer.index] = now - t_layer - (metrics.seconds - monitoring)
            t_layer = now
        straggler.after_micro_batch(m)
        t_done = time.perf_counter()
        if reporter is not None:
            reporter.add(layer_s, t_done - t_layer)
        interval.compute += t_done - t_got
        stats.compute_s += t_done - t_got
        if outbox is not None:
            if top > last:
                outbox.send(m, x, probe)
                interval.depth = max(interval.depth, outbox.in_flight)
            else:
                outbox.beat_if_quiet()
        ended = time.perf_counter()
        interval.send += ended - t_done
        stats.send_wait_s += ended - t_done
        stats.micro_batches += 1
        stats.samples += rows
        if role.stage == 0:
            stats.input_samples += rows
        interval.samples += rows
        if progress is not None:
            progress.update(m, rows)
        if record_every is not None and stats.micro_batches % record_every == 0:
            busy = interval.record(metrics, m, first, ended)
            if progress is not None:
                progress.publish(role.stage, [layer.index for layer in layers], busy)
            interval = _Interval(ended)
        if reporter is not None and reporter.count >= check_every // 2:
            reporter.publish()
        if lookahead is not None:
            lookahead.save_upto(layers, mine[idx + 1] if idx + 1 < len(mine)
                                else schedule.length)
    else:
        exhausted = True
    stop_at = schedule.length if end[0] == END else end[1]
    if sync is not None:
        # before waiting for the input's end: a peer with micro-batches left may be waiting at
        # a round boundary that this replica, having none, would otherwise never reach
        t0 = time.perf_counter()
        for cut in sync.drain(stop_at):
            if saver is not None:
                saver.save_upto(layers, cut)
        sync.finish()
        stats.sync_wait_s += time.perf_counter() - t0
    if exhausted and isinstance(source, Inbox):
        source.finish()
        end = (source.end_kind, source.end_at)
    t0 = time.perf_counter()
    if outbox is not None:
        outbox.close(*end)
        stats.max_in_flight = max(stats.max_in_flight, outbox.max_in_flight)
    ended = time.perf_counter()
    stats.send_wait_s += ended - t0
    if interval is not None:
        interval.send += ended - t0
    if record_every is not None and interval is not None and interval.samples:
        interval.record(metrics, schedule.length if end[0] == END else end[1], first, ended)
    stats.active_s += ended - began
    return end
