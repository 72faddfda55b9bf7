"""What a stage does with one micro-batch: each of its layers trains on it or forwards it frozen.

    for each layer of the stage, up to the highest layer that trains on m (``Schedule.top``):
        x = layer.train_step(x)  if the layer trains on m   # one CD-k/PCD-k update
                                                            # (a label layer: with m's labels)
            layer.forward(x)     otherwise                  # frozen
        every check_every updates: every parameter of the layer is finite, and so were its
        activations (on the CPU they are checked at every step; on a GPU a device-side flag
        is raised and read here, so the hot path never waits for the device)

A held-out probe that travels with m is measured by each layer first (``probe.py``). The
monitoring settings are read from the config once (``Watch``), not per micro-batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipedbn.config import Config
from pipedbn.model.rbm import RBM
from pipedbn.observe.monitor import Metrics
from pipedbn.observe.probe import image_shape, layer0_images, probe_generator, probe_layer
from pipedbn.pipeline.context import MicroBatch
from pipedbn.pipeline.layers import train_on
from pipedbn.pipeline.schedule import Schedule


@dataclass(frozen=True)
class Watch:
    """The monitoring (and parameter check) settings the per-micro-batch path needs."""

    seed: int
    enabled: bool
    scalars_every: int
    histograms_every: int
    images_every: int
    eval_every: int
    image_shape: list[int] | None
    check_every: int

    @classmethod
    def of(cls, cfg: Config) -> Watch:
        mo = cfg.monitor
        return cls(cfg.seed, mo.enabled, mo.scalars_every, mo.histograms_every,
                   mo.images_every, mo.eval_every, mo.image_shape, cfg.train.check_every)

    def is_probe(self, m: int) -> bool:
        """Whether micro-batch m carries a held-out probe (``monitor.eval_every``, images)."""
        return self.enabled and any(every and m % every == 0
                                    for every in (self.eval_every, self.images_every))


def layer_step(layer: RBM, batch: MicroBatch, schedule: Schedule, watch: Watch,
               metrics: Metrics, replicas: int = 1) -> MicroBatch:
    """What layer ``layer.index`` does with a micro-batch: train on it or forward it frozen;
    returns what it passes up (the probe too, measured first). ``replicas``: of the layer's
    stage (``RBM.train_step``)."""
    i, m, x, probe = layer.index, batch.m, batch.x, batch.probe
    trains = schedule.trains(i, m)
    if probe is not None:
        with metrics.timed():
            generator = probe_generator(watch.seed, i, m, probe.device)
            held_in = probe
            values, probe = probe_layer(layer, held_in, x, generator, measure=trains)
            metrics.scalars(m, i, values, "rbm")
            if (trains and i == 0 and watch.images_every and m % watch.images_every == 0
                    and metrics.writer(0) is not None):
                shape = image_shape(layer.n_visible, watch.image_shape)
                if shape is not None:
                    for tag, img in layer0_images(layer, held_in, shape, generator).items():
                        metrics.image(m, 0, tag, img)
    if not trains:
        y = layer.forward(x, m)
        if m % watch.check_every == 0:
            layer.check_activations()
        return MicroBatch(m, y, probe, batch.labels)
    layer.step = m - schedule.starts[i]  # the same count on a replica that saw only some
    record = watch.enabled and metrics.due(("scalars", i), layer.step, watch.scalars_every)
    stats: dict[str, float] | None = {} if record else None
    y = train_on(layer, x, batch.labels, m, stats, replicas)
    if stats:
        with metrics.timed():
            stats["weight_norm"] = float(layer.weight.norm())
            metrics.scalars(m, i, stats, "rbm")
    if watch.enabled and watch.histograms_every and metrics.due(
            ("histograms", i), layer.step, watch.histograms_every):
        with metrics.timed():
            histograms(metrics, m, layer)
    if layer.step % watch.check_every == 0 or layer.step == schedule.steps(i):
        layer.check_parameters(m)
    return MicroBatch(m, y, probe, batch.labels)


def histograms(metrics: Metrics, step: int, layer: RBM) -> None:
    for name, t in layer.named_parameters():
        metrics.histogram(step, layer.index, f"weights/{name}", t)
    for name, derived in layer.histogram_values().items():
        metrics.histogram(step, layer.index, f"weights/{name}", derived)


class Straggler:
    """``straggler`` config: sleep after a chosen layer (or rank) handles a micro-batch. It
    stands for a slower device, so its sleep is part of the stage's compute. The first sleep is
    recorded in ``metrics`` (``straggler/onset``) to time the balancer."""

    def __init__(self, cfg: Config, rank: int | None, metrics: Metrics) -> None:
        """``rank``: None in a run in one process (``straggler.rank`` is for distributed runs)."""
        st = cfg.straggler
        self.after, self.sleep_s = st.after, st.sleep_s
        self.layer = st.layer if st.sleep_s > 0 else None
        self.whole_rank = st.sleep_s > 0 and rank is not None and st.rank == rank
        self.metrics, self.started = metrics, False

    def _sleep(self, m: int, layer: int) -> None:
        if not self.started:
            self.metrics.event(m, layer, "straggler/onset", {"sleep_s": self.sleep_s})
        self.started = True
        time.sleep(self.sleep_s)

    def after_layer(self, i: int, m: int) -> None:
        if i == self.layer and m >= self.after:
            self._sleep(m, i)

    def after_micro_batch(self, m: int) -> None:
        if self.whole_rank and m >= self.after:
            self._sleep(m, -1)


@dataclass
class Work:
    """What the layers of a stage took for one micro-batch: seconds per layer (monitoring left
    out: the balancer plans with the layer's own cost) and the rank's extra time after them."""

    layer_s: dict[int, float]
    extra_s: float
    done: float
    """``perf_counter`` when the work ended."""


class Compute:
    """A stage's layers applied to one micro-batch, with the straggler's sleeps."""

    def __init__(self, layers: list[RBM], schedule: Schedule, watch: Watch, metrics: Metrics,
                 straggler: Straggler, replicas: int = 1) -> None:
        self.layers, self.schedule, self.watch = layers, schedule, watch
        self.metrics, self.straggler, self.replicas = metrics, straggler, replicas

    def __call__(self, batch: MicroBatch, t_start: float) -> tuple[MicroBatch, Work]:
        top = self.schedule.top(batch.m)
        layer_s: dict[int, float] = {}
        t_layer = t_start
        for layer in self.layers:
            if layer.index > top:
                break
            monitoring = self.metrics.seconds
            batch = layer_step(layer, batch, self.schedule, self.watch, self.metrics,
                               self.replicas)
            self.straggler.after_layer(layer.index, batch.m)
            now = time.perf_counter()
            layer_s[layer.index] = now - t_layer - (self.metrics.seconds - monitoring)
            t_layer = now
        self.straggler.after_micro_batch(batch.m)
        done = time.perf_counter()
        return batch, Work(layer_s, done - t_layer, done)
