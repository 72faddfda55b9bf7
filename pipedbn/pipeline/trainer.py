"""The in-process trainer: the reference every distributed run must equal bit for bit.

Order of operations (see also ``schedule.py`` and ``rbm.py``):

    for m in 0, 1, ..., length - 1:            # the stream of micro-batches
        top = highest layer that trains on m    # skip m if no layer does
        x = micro-batch (epoch, j) of m         # permutation of (seed, epoch), read ahead
        for i in 0 .. top:
            x = layer_i.train_step(x)  if layer i trains on m   # one CD-k/PCD-k update
                layer_i.forward(x)     otherwise                # frozen
            every check_every updates: every parameter of layer i is finite

Each layer draws only from its own generator, seeded from (seed, i), and only inside its own
``train_step``/``forward``; what a layer computes therefore depends on nothing but its input
sequence, which is what lets each layer run on its own rank and still give the same weights.
Monitoring (metrics, held-out evaluation) never touches a layer's generator.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipedbn.config import Config
from pipedbn.data.loader import Data, Prefetcher
from pipedbn.model.rbm import RBM
from pipedbn.observe.monitor import Metrics, flat_params
from pipedbn.observe.probe import (
    gibbs_samples,
    image_shape,
    layer0_images,
    probe_generator,
    probe_layer,
    tile,
)
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.schedule import Schedule, build_schedule
from pipedbn.run.checkpoint import Checkpoint, Saver
from pipedbn.run.rundir import atomic_write

log = logging.getLogger("pipedbn")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def dtype_of(cfg: Config) -> torch.dtype:
    return _DTYPES[cfg.train.dtype]


def make_schedule(cfg: Config, batches_per_epoch: int) -> Schedule:
    return build_schedule(cfg.train.schedule, batches_per_epoch,
                          [layer.epochs for layer in cfg.layers], cfg.train.offset_epochs)


def make_layer(cfg: Config, i: int, features: int, schedule: Schedule, device: torch.device,
               visible_mean: np.ndarray | None = None) -> RBM:
    """Layer i, freshly initialised: a pure function of (config, seed, i) and, for layer 0, the
    data mean (``visible_mean``), so any process can build any layer."""
    from stages import registry

    assert (i == 0) == (visible_mean is not None)
    sizes = [features] + cfg.sizes
    lc = cfg.layers[i]
    return registry.get(lc.kind)(
        sizes[i], sizes[i + 1], lc, seed=cfg.seed, index=i,
        steps_per_epoch=schedule.batches_per_epoch, total_steps=schedule.steps(i),
        device=device, dtype=dtype_of(cfg),
        visible_mean=torch.from_numpy(visible_mean) if visible_mean is not None else None,
    )


def make_layers(cfg: Config, data: Data, schedule: Schedule, device: torch.device) -> list[RBM]:
    return [make_layer(cfg, i, data.features, schedule, device,
                       data.feature_mean if i == 0 else None) for i in range(len(cfg.layers))]


class Straggler:
    """``straggler`` config: sleep after a chosen layer (or rank) handles a micro-batch. The
    first sleep is recorded in ``metrics`` (``straggler/onset``) to time the balancer."""

    def __init__(self, cfg: Config, rank: int | None = None,
                 metrics: Metrics | None = None) -> None:
        st = cfg.straggler
        self.after, self.sleep_s = st.after, st.sleep_s
        self.layer = st.layer if st.sleep_s > 0 else None
        self.whole_rank = st.sleep_s > 0 and rank is not None and st.rank == rank
        self.metrics, self.started = metrics, False

    def _sleep(self, m: int, layer: int) -> None:
        if not self.started and self.metrics is not None:
            self.metrics.event(m, layer, "straggler/onset", {"sleep_s": self.sleep_s})
        self.started = True
        time.sleep(self.sleep_s)

    def after_layer(self, i: int, m: int) -> None:
        if i == self.layer and m >= self.after:
            self._sleep(m, i)

    def after_micro_batch(self, m: int) -> None:
        if self.whole_rank and m >= self.after:
            self._sleep(m, -1)


def layer_step(layer: RBM, x: torch.Tensor, m: int, schedule: Schedule, cfg: Config,
               metrics: Metrics, probe: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What layer ``layer.index`` does with micro-batch m: train on it or forward it frozen.
    A held-out ``probe`` that came with m is measured first (``probe.py``) and passed up too."""
    i, mo = layer.index, cfg.monitor
    trains = schedule.trains(i, m)
    if probe is not None:
        with metrics.timed():
            generator = probe_generator(cfg.seed, i, m, probe.device)
            held_in = probe
            values, probe = probe_layer(layer, held_in, x, generator, measure=trains)
            metrics.scalars(m, i, values, "rbm")
            if (trains and i == 0 and mo.images_every and m % mo.images_every == 0
                    and metrics.writer(0) is not None):
                shape = image_shape(layer.n_visible, mo.image_shape)
                if shape is not None:
                    for tag, img in layer0_images(layer, held_in, shape, generator).items():
                        metrics.image(m, 0, tag, img)
    if not trains:
        return layer.forward(x, m), probe
    layer.step = m - schedule.starts[i]  # the same count on a replica that saw only some
    record = mo.enabled and metrics.due(("scalars", i), layer.step, mo.scalars_every)
    stats: dict[str, float] | None = {} if record else None
    y = layer.train_step(x, m, stats)
    if stats:
        with metrics.timed():
            stats["weight_norm"] = float(layer.weight.norm())
            metrics.scalars(m, i, stats, "rbm")
    if mo.enabled and mo.histograms_every and metrics.due(("histograms", i), layer.step,
                                                          mo.histograms_every):
        with metrics.timed():
            histograms(metrics, m, layer)
    if layer.step % cfg.train.check_every == 0 or layer.step == schedule.steps(i):
        layer.check_parameters(m)
    return y, probe


def histograms(metrics: Metrics, step: int, layer: RBM) -> None:
    for name, t in layer.parameters().items():
        metrics.histogram(step, layer.index, f"weights/{name}", t)


def is_probe(cfg: Config, m: int) -> bool:
    """Whether micro-batch m carries a held-out probe (``monitor.eval_every``, images)."""
    mo = cfg.monitor
    return mo.enabled and any(every and m % every == 0
                              for every in (mo.eval_every, mo.images_every))


def probe_data(cfg: Config, data: Data, device: torch.device) -> torch.Tensor | None:
    """The held-out samples every probe carries (None without monitoring or held-out data)."""
    mo = cfg.monitor
    if not mo.enabled or not len(data.held_rows) or not (mo.eval_every or mo.images_every):
        return None
    return torch.from_numpy(data.held_sample(mo.eval_samples)).to(device=device,
                                                                  dtype=dtype_of(cfg))


def evaluate(layers: list[RBM], x: torch.Tensor, reference: torch.Tensor | None = None
             ) -> list[dict[str, float]]:
    """Per layer, on ``x`` propagated up with probabilities: reconstruction error, the
    pseudo-log-likelihood (binary units) and the free-energy gap mean F(x) - mean F(reference)
    when a reference (training) sample is given."""
    out: list[dict[str, float]] = []
    with torch.no_grad():
        for layer in layers:
            row = {"recon_error": layer.reconstruction_error(x)}
            generator = probe_generator(0, layer.index, -1, x.device)
            pll = probe_layer(layer, x, None, generator)[0].get("pseudo_log_likelihood")
            if pll is not None:
                row["pseudo_log_likelihood"] = pll
            if reference is not None:
                gap = layer.free_energy(x).mean() - layer.free_energy(reference).mean()
                row["free_energy_gap"] = float(gap)
                reference = layer.hidden_probs(reference)
            x = layer.hidden_probs(x)
            if len(x) > 1:  # how much the hidden units vary over the sample (DEAD_STD)
                std = x.std(0)
                row["hidden_std"] = float(std.mean())
                row["constant_units"] = float((std < DEAD_STD).float().mean())
                row["hidden_mean"] = float(x.mean())
            out.append(row)
    return out


DEAD_STD = 0.01
"""A hidden unit whose probability varies less than this (std over the held-out sample) is
nearly constant: it tells samples apart no better than a bias."""
DEAD_FRACTION = 0.9
"""A layer with at least this fraction of nearly constant units gets a warning at the end."""


def layer_warnings(cfg: Config, end: list[dict[str, float]], samples: int) -> list[str]:
    """Warnings for the layers whose hidden units came out nearly constant or saturated on the
    held-out sample of the final evaluation, with what to try."""
    out = []
    for i, row in enumerate(end):
        if row.get("constant_units", 0.0) < DEAD_FRACTION:
            continue
        mean = row["hidden_mean"]
        state = ("saturated: nearly always on" if mean > 0.95 else
                 "saturated: nearly always off" if mean < 0.05 else
                 f"stuck near {mean:.2f} whatever the input")
        out.append(
            f"layer {i}: {row['constant_units']:.0%} of its {cfg.layers[i].hidden} hidden units "
            f"are nearly constant over {samples} held-out samples (mean std "
            f"{row['hidden_std']:.2g}; {state}), so its features carry little information "
            "about the input. Try more epochs (rbm.epochs), another learning rate (rbm.lr), "
            "less weight decay (rbm.weight_decay), or check that the data varies (data.scale)")
    return out


def record_eval(layers: list[RBM], held: torch.Tensor, ref: torch.Tensor, metrics: Metrics,
                step: int, tensorboard: bool = True) -> list[dict[str, float]]:
    """``evaluate`` and write its rows to ``metrics`` as ``eval/*`` at ``step``."""
    rows = evaluate(layers, held, ref)
    for i, row in enumerate(rows):
        metrics.scalars(step, i, row, "eval", tensorboard)
    return rows


def record_end(cfg: Config, metrics: Metrics, result: Result, held: torch.Tensor, step: int
               ) -> None:
    """What the end of a run adds: a warning per useless layer (log, ``metrics.jsonl``,
    TensorBoard text), and in TensorBoard histograms, layer 0's images and samples of the whole
    DBN, and a row of the HParams table per layer."""
    for i, text in enumerate(layer_warnings(cfg, result.end, len(held))):
        if not log.isEnabledFor(logging.INFO):  # else the summary, printed, says it
            log.warning("%s", text)
        metrics.event(step, i, "warnings/useless_layer", {"message": text}, text=text)
    if metrics.writer(0) is None:
        return
    for i, last in enumerate(result.end):
        histograms(metrics, step, result.layers[i])
        metrics.hparams(i, flat_params(cfg, i), {f"eval/{k}": v for k, v in last.items()})
    layer0 = result.layers[0]
    shape = image_shape(layer0.n_visible, cfg.monitor.image_shape)
    if shape is not None:
        generator = probe_generator(cfg.seed, -1, step, held.device)
        for tag, img in layer0_images(layer0, held, shape, generator).items():
            metrics.image(step, 0, tag, img)
        dbn = gibbs_samples(result.layers, 64, 200, generator)
        metrics.image(step, 0, "images/dbn_samples", tile(dbn, shape, columns=8))


def finish_run(run_dir: Path, text: str) -> None:
    """Export the model from the saved layer states, keep the summary and print it (stderr).
    Whoever started the run prints the run directory (``local.train_local``, a torchrun
    worker)."""
    from pipedbn.model.dbn import MODEL_FILE, from_run

    from_run(run_dir).save(run_dir / MODEL_FILE)
    atomic_write(run_dir / "summary.txt", (text + "\n").encode())
    if log.isEnabledFor(logging.INFO):  # not under --quiet
        print(text, file=sys.stderr)


def monitor_data(data: Data, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out samples (training ones if there are none) and a training reference sample of the
    same size, for ``evaluate``."""
    held_rows, ref_rows = data.eval_rows(data.eval_samples)  # bounded: monitor.final_samples
    held, ref = torch.from_numpy(data.rows(held_rows)), torch.from_numpy(data.rows(ref_rows))
    return held.to(device=device, dtype=dtype), ref.to(device=device, dtype=dtype)


@dataclass
class Result:
    layers: list[RBM]
    start: list[dict[str, float]]
    end: list[dict[str, float]]
    seconds: float
    samples: int


def train_in_process(cfg: Config, data: Data, metrics: Metrics, run_dir: Path | None = None,
                     resume: Checkpoint | None = None) -> Result:
    """Train every layer in this process, in the reference order of operations; with a
    ``run_dir``, take checkpoints there (``checkpoint.py``), the final state included; with
    ``resume``, continue from that checkpoint."""
    device = resolve_device(cfg.train.device)
    dtype = dtype_of(cfg)
    schedule = make_schedule(cfg, data.batches_per_epoch)
    log.info("%s", schedule.describe())
    layers = make_layers(cfg, data, schedule, device)
    straggler = Straggler(cfg)
    begin = resume.micro_batch if resume is not None else 0

    held, ref = monitor_data(data, device, dtype)
    if begin == 0:
        start = record_eval(layers, held, ref, metrics, 0)
    else:  # recorded by the first attempt already
        start = evaluate(layers, held, ref)
        assert resume is not None and run_dir is not None
        for layer in layers:
            layer.load_state_dict(resume.load(run_dir, layer.index))
        log.info("resumed from %s at micro-batch %d", resume.tag, begin)
    saver = Saver(run_dir, cfg, schedule, begin, finalizer=True)

    positions = [(m, *schedule.data_position(m)) for m in schedule.micro_batches(0, begin)]
    reader = Prefetcher(data, positions, cfg.data.prefetch, dtype)
    held_probe = probe_data(cfg, data, device)
    metrics.use(list(range(len(layers))), 0)
    progress = Progress(cfg, schedule, None, 0, 1)
    progress.begin_segment(0, 0, 0, 1)
    layer_s = [0.0] * len(layers)
    t0 = time.perf_counter()
    samples = 0
    try:
        for m, x in reader:
            saver.save_upto(layers, m)
            x = x.to(device, non_blocking=True)
            samples += x.shape[0]
            probe = held_probe if held_probe is not None and is_probe(cfg, m) else None
            t_layer = time.perf_counter()
            for i in range(schedule.top(m) + 1):
                x, probe = layer_step(layers[i], x, m, schedule, cfg, metrics, probe)
                straggler.after_layer(i, m)
                now = time.perf_counter()
                layer_s[i], t_layer = layer_s[i] + now - t_layer, now
            progress.update(m, x.shape[0], layer_s)
        saver.save_upto(layers, schedule.length)
    finally:
        reader.close()
        progress.close()
    seconds = time.perf_counter() - t0
    if run_dir is not None:
        for layer in layers:
            saver.save(layer, schedule.length)
        saver.finalize()
    end = record_eval(layers, held, ref, metrics, schedule.length)
    metrics.scalar(schedule.length, 0, "throughput/samples_per_s", samples / seconds)
    result = Result(layers, start, end, seconds, samples)
    try:
        record_end(cfg, metrics, result, held, schedule.length)
    except Exception as e:  # the run's results matter more than its pictures
        log.warning("monitoring at the end of the run failed: %s", e)
    return result


def summary(cfg: Config, data: Data, result: Result) -> str:
    sizes = [data.features] + cfg.sizes
    lines = [f"{'layer':>5} {'kind':>9} {'size':>11} {'updates':>8} "
             f"{'recon init':>12} {'recon end':>10}"]
    for i, layer in enumerate(result.layers):
        lines.append(
            f"{i:>5} {cfg.layers[i].kind:>9} {f'{sizes[i]}x{sizes[i + 1]}':>11} "
            f"{layer.step:>8} {result.start[i]['recon_error']:>12.3f} "
            f"{result.end[i]['recon_error']:>10.3f}"
        )
    lines += [f"warning: {w}" for w in layer_warnings(
        cfg, result.end, len(data.eval_rows(data.eval_samples)[0]))]
    rate = result.samples / result.seconds if result.seconds else float("nan")
    lines.append(f"{result.samples} samples through the pipeline in {result.seconds:.1f} s "
                 f"({rate:.0f} samples/s); reconstruction error on "
                 f"{'held-out' if len(data.held_rows) else 'training'} data per sample")
    return "\n".join(lines)

