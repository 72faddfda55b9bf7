"""The ``monitor`` section: what a run records while it trains and what it shows
(docs/monitoring.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipedbn.config.checks import positive


@dataclass
class MonitorConfig:
    """What a run records while it trains (``metrics.jsonl``, TensorBoard under ``tb/``) and
    shows (the progress bar). See docs/monitoring.md. The defaults cost under 3% of throughput."""

    enabled: bool = True
    """``false``: record only the evaluations at the start and the end and the throughput (no
    TensorBoard, probes, images, histograms or progress)."""
    tensorboard: bool = True
    """Write TensorBoard event files (a run per layer under ``tb/``) beside ``metrics.jsonl``."""
    scalars_every: int = 50
    """A layer's updates between training scalars (``rbm/recon_error``, ``rbm/hidden_mean``,
    ``rbm/lr``, ``rbm/momentum``, ``rbm/weight_norm``); also a stage's micro-batches between
    ``pipeline/*`` and ``throughput/*`` records."""
    eval_every: int = 100
    """Micro-batches of the stream between held-out probes: ``eval_samples`` held-out samples
    travel up the pipeline with micro-batch m (m a multiple of this), and each layer that trains
    on m measures, before its update, ``rbm/free_energy_gap`` (held-out minus this training
    micro-batch), ``rbm/pseudo_log_likelihood`` and ``rbm/heldout_recon_error`` on them.
    0 = no probes but those that carry images (the start and end evaluations remain). Probes
    need held-out data (``data.held_out`` > 0)."""
    eval_samples: int = 100
    """Held-out samples in a probe (a random subset fixed by the seed). A probe travels in
    pieces of ``train.batch_size`` rows, each taking a place in the ``pipeline.window``."""
    final_samples: int = 1000
    """Held-out samples in the evaluations at the start and the end (``eval/*``, the summary):
    the whole held-out split when it is no larger (tiny's 180, quickstart's 500), else a random
    subset fixed by the seed, with as many training samples as its reference, so that their
    time and memory do not grow with the data set (``pipedbn eval`` measures up to 10,000)."""
    histograms_every: int = 500
    """A layer's updates between histograms of its weights and biases (and at the end)."""
    images_every: int = 1000
    """Micro-batches between images of layer 0 (filters, held-out reconstructions beside their
    inputs, Gibbs samples), taken with a probe; the end of the run adds samples of the whole DBN.
    0 = only at the end. Only for inputs that are images (see ``image_shape``)."""
    image_shape: list[int] | None = None
    """Height and width of one input image; default: square inputs (28x28 for 784 features).
    Non-square inputs without it get no images."""
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    """One rank (the one reading the data) shows samples/s, each layer's epochs done of its
    own and the bottleneck stage: ``bar`` a tqdm bar, ``log`` a line every ``log_seconds``,
    ``auto`` the bar when stderr is a terminal, else lines."""
    log_seconds: float = 10.0
    """Seconds between progress lines (``progress: log``)."""

    def problems(self) -> list[str]:
        p = positive("monitor.scalars_every", self.scalars_every)
        for name in ("eval_every", "histograms_every", "images_every"):
            p += positive(f"monitor.{name}", getattr(self, name), strict=False)
        p += positive("monitor.eval_samples", self.eval_samples)
        p += positive("monitor.final_samples", self.final_samples)
        p += positive("monitor.log_seconds", self.log_seconds)
        if self.image_shape is not None and (len(self.image_shape) != 2
                                             or min(self.image_shape) < 1):
            p.append(f"monitor.image_shape: expected [height, width], got {self.image_shape}")
        return p
