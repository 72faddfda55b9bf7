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

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch

from pipedbn.config import Config
from pipedbn.rbm import RBM
from pipedbn.rundir import Metrics
from pipedbn.schedule import Schedule
from pipedbn.trainer import Straggler, layer_step
from pipedbn.transport import Sender


@dataclass
class StageStats:
    stage: int
    layers: list[int]
    micro_batches: int = 0
    samples: int = 0
    compute_s: float = 0.0
    recv_wait_s: float = 0.0
    send_wait_s: float = 0.0
    active_s: float = 0.0
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

    def record(self, metrics: Metrics, m: int, layer: int, now: float) -> None:
        wall = max(now - self.start, 1e-9)
        metrics.scalars(m, layer, {
            "compute_s": self.compute, "recv_wait_s": self.recv, "send_wait_s": self.send,
            "busy_frac": self.compute / wall, "in_flight": self.depth,
        }, "pipeline")
        metrics.scalar(m, layer, "throughput/samples_per_s", self.samples / wall)


def _timed(source: Iterable[tuple[int, torch.Tensor]]
           ) -> Iterator[tuple[int, torch.Tensor, float, float]]:
    """Items of ``source`` with the time the wait for each began and ended."""
    it = iter(source)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        t1 = time.perf_counter()
        if item is None:
            return
        yield item[0], item[1], t0, t1


def run_stage(cfg: Config, stage: int, layers: list[RBM], schedule: Schedule,
              source: Iterable[tuple[int, torch.Tensor]], sender: Sender | None,
              metrics: Metrics, device: torch.device) -> StageStats:
    """Stream every micro-batch of ``source`` through ``layers``; returns the stage's timings."""
    first, last = layers[0].index, layers[-1].index
    stats = StageStats(stage, [layer.index for layer in layers])
    straggler = Straggler(cfg, rank=stage)
    expected = iter(schedule.micro_batches(first))
    interval: _Interval | None = None
    began = ended = time.perf_counter()
    if first == 0 and sender is not None:
        sender.beat_if_quiet()  # the stream begins: the stages above switch to pipeline.timeout
    for m, x, t_wait, t_got in _timed(source):
        want = next(expected, None)
        if m != want:  # the neighbour runs a different schedule: configs differ between ranks
            raise RuntimeError(f"stage {stage}: received micro-batch {m}, expected {want}")
        if interval is None:
            began = t_got
            interval = _Interval(t_got)
        else:
            interval.recv += t_got - t_wait
            stats.recv_wait_s += t_got - t_wait
        x = x.to(device, non_blocking=True)
        rows = x.shape[0]
        top = schedule.top(m)
        for layer in layers:
            if layer.index > top:
                break
            x = layer_step(layer, x, m, schedule, cfg, metrics)
            straggler.after_layer(layer.index, m)
        straggler.after_micro_batch(m)
        t_done = time.perf_counter()
        interval.compute += t_done - t_got
        stats.compute_s += t_done - t_got
        if sender is not None:
            if top > last:
                sender.send(m, x)
                interval.depth = max(interval.depth, sender.in_flight)
            else:
                sender.beat_if_quiet()
        ended = time.perf_counter()
        interval.send += ended - t_done
        stats.send_wait_s += ended - t_done
        stats.micro_batches += 1
        stats.samples += rows
        interval.samples += rows
        if stats.micro_batches % cfg.train.log_every == 0:
            interval.record(metrics, m, first, ended)
            interval = _Interval(ended)
    missing = next(expected, None)
    if missing is not None:
        raise RuntimeError(f"stage {stage}: the stream ended before micro-batch {missing}")
    if sender is not None:
        t0 = time.perf_counter()
        sender.close()
        ended = time.perf_counter()
        stats.send_wait_s += ended - t0
        stats.max_in_flight = sender.max_in_flight
    if interval is not None and interval.samples:
        interval.record(metrics, schedule.length, first, ended)
    stats.active_s = ended - began
    return stats
