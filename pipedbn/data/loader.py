"""Training data: held-out split, preprocessing, checks, deterministic micro-batches, prefetch.

``open_data`` opens a source (``datasets.py``), splits it, and (``measure``) reads a bounded
sample (the whole training split up to ``data.stats_samples`` rows) in chunks to check it
(finite; within [0, 1] for a Bernoulli visible layer) and to take the statistics that
standardisation and the visible-bias initialisation need; once per run, in the process that
starts it: the others open the headers only and trust the run's manifest (``manifest.py``,
``prepare.run_data``). A bad value in the sample is reported before any run directory exists.
Micro-batches are then read on demand, in the order of a permutation drawn from (seed, epoch),
and every value is checked as it is read (``Data.rows``): a bad one outside the sample stops
the run there, naming file and sample.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipedbn.config import Config
from pipedbn.data.binarize import stochastic_binarize
from pipedbn.data.datasets import Source, open_source
from pipedbn.data.idx_sources import OFFICIAL, open_official
from pipedbn.data.labels import class_indices
from pipedbn.errors import DataError

_CHUNK = 8192


@dataclass
class Data:
    source: Source
    train_rows: np.ndarray
    """Sorted global row indices of the training split."""
    held_rows: np.ndarray
    scale: float
    binarize: float | None
    mean: np.ndarray | None
    """Per-feature shift of ``standardize`` (None when off)."""
    std: np.ndarray | None
    feature_mean: np.ndarray
    """Mean of the preprocessed training data (initialises layer 0's visible bias)."""
    unit_range: bool
    batch_size: int
    drop_last: bool
    shuffle: bool
    seed: int
    stochastic_seed: int | None = None
    """``data.stochastic_binarize``: each value p becomes 1 with probability p, keyed by the
    sample's row in its source."""
    valid_rows: np.ndarray | None = None
    """Sorted rows of a validation split carved from training (``data.validation``), if any."""
    checked: bool = False
    """Whether the statistics' sample has been read and checked (``measure``) or taken on
    trust from a manifest that matches the files (``manifest.py``); the other values are
    checked as they are read."""
    eval_samples: int = 1000
    """At most this many held-out samples in the start and end evaluations
    (``monitor.final_samples``; ``eval_rows``)."""
    classes: np.ndarray | None = None
    """The class index of every sample (``data/labels.py``) when the top layer has label
    units; its micro-batches then carry their labels."""
    _perm_epoch: int = -1
    _perm: np.ndarray | None = None

    @property
    def features(self) -> int:
        return self.source.features

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.train_rows), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """Raw values of global ``rows`` (any order), reading each shard's rows in sorted order
        (one in-memory shard: indexed as given, the sort buys nothing there and was most of a
        micro-batch's read, 27 against 5 µs for tiny's)."""
        shards = self.source.shards
        if len(shards) == 1 and shards[0].path is None:
            return np.take(shards[0].array, rows, axis=0).astype(np.float32, copy=False)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), self.features), dtype=np.float32)
        bounds = np.cumsum([0] + [s.rows for s in self.source.shards])
        cut = np.searchsorted(sorted_rows, bounds)
        for k, shard in enumerate(self.source.shards):
            lo, hi = cut[k], cut[k + 1]
            if lo < hi:
                out[order[lo:hi]] = shard.take(sorted_rows[lo:hi] - bounds[k])
        return out

    def _where(self, row: int) -> str:
        bounds = np.cumsum([s.rows for s in self.source.shards])
        k = int(np.searchsorted(bounds, row, side="right"))
        local = row - (int(bounds[k - 1]) if k else 0)
        return f"{self.source.shards[k].name} sample {local}"

    def preprocess(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Raw values ``x`` of global ``rows`` -> layer 0's input."""
        with np.errstate(over="ignore", invalid="ignore"):  # check() names what overflowed
            x *= np.float32(self.scale)
        if self.stochastic_seed is not None:
            x = stochastic_binarize(x, rows, self.stochastic_seed)
        if self.binarize is not None:
            # NaN/Inf stay non-finite so that check() reports them instead of hiding them as 0/1
            x = np.where(np.isfinite(x), x > self.binarize, np.nan).astype(np.float32)
        if self.mean is not None:
            assert self.std is not None
            x -= self.mean
            x /= self.std
        return x

    def check(self, x: np.ndarray, rows: np.ndarray) -> None:
        if x.size:  # two reductions, no temporaries; NaN propagates through both
            lo, hi = float(x.min()), float(x.max())
            if np.isfinite(lo) and np.isfinite(hi) and not (
                    self.unit_range and (lo < 0 or hi > 1)):
                return
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raw = float(self.raw(rows[r : r + 1])[0, c])
            if np.isfinite(raw):  # finite in the file: the preprocessing overflowed
                raise DataError(f"data: value {raw:.4g} in {self._where(int(rows[r]))} (feature "
                                f"{c}) times data.scale={self.scale:.4g} is not a finite float32; "
                                "lower data.scale")
            raise DataError(f"data: non-finite value (NaN or Inf) in {self._where(int(rows[r]))}; "
                            "clean the data or drop those samples")
        if self.unit_range:
            bad = (x < 0) | (x > 1)
            if bad.any():
                r, c = (int(v) for v in np.argwhere(bad)[0])
                if self.mean is not None:
                    raise DataError(
                        f"data: data.standardize=true makes value {x[r, c]:.4g} in "
                        f"{self._where(int(rows[r]))} (feature {c}), outside [0, 1], which a "
                        "bernoulli first layer needs: use layers.0.kind=gaussian for "
                        "standardised data, or set data.standardize=false")
                raise DataError(
                    f"data: value {x[r, c]:.4g} in {self._where(int(rows[r]))} (feature {c}) is "
                    "outside [0, 1], which a bernoulli first layer needs: set data.scale (e.g. "
                    "0.00392156862745098 for 0..255 pixels) or data.binarize=0.5, or use "
                    "layers.0.kind=gaussian with data.standardize=true for real-valued data"
                )

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Preprocessed, checked values of global ``rows``."""
        x = self.preprocess(self.raw(rows), rows)
        self.check(x, rows)
        return x

    def batch_rows(self, epoch: int, j: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            n = len(self.train_rows)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, 0xDA7A, epoch])
                self._perm = self.train_rows[rng.permutation(n)]
            else:
                self._perm = self.train_rows
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]

    def micro_batch(self, epoch: int, j: int) -> np.ndarray:
        return self.rows(self.batch_rows(epoch, j))

    def micro_batch_labels(self, epoch: int, j: int) -> np.ndarray | None:
        """The class indices of micro-batch (epoch, j); None without label units."""
        return None if self.classes is None else self.classes[self.batch_rows(epoch, j)]

    def preprocessing(self) -> dict[str, torch.Tensor]:
        """How raw values become layer 0's input, as tensors (saved in the run directory)."""
        out = {"scale": torch.tensor(self.scale, dtype=torch.float64)}
        if self.binarize is not None:
            out["binarize"] = torch.tensor(self.binarize, dtype=torch.float64)
        if self.stochastic_seed is not None:
            out["stochastic_binarize"] = torch.tensor(self.stochastic_seed, dtype=torch.int64)
        if self.mean is not None and self.std is not None:
            out["mean"], out["std"] = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        return out

    @property
    def monitor_rows(self) -> np.ndarray:
        """What monitoring watches: the validation split when there is one, else the held-out
        split (so that a run with an official test split need not look at it while training)."""
        return self.valid_rows if self.valid_rows is not None and len(self.valid_rows) \
            else self.held_rows

    def held_out(self) -> np.ndarray:
        return self.rows(self.monitor_rows)

    def train_sample(self, n: int) -> np.ndarray:
        """``n`` training samples drawn once from (seed), for monitoring the free-energy gap
        (a random subset: files are often sorted by class)."""
        return self.rows(self.subset(self.train_rows, n, 0x7A1))

    def held_sample(self, n: int) -> np.ndarray:
        """``n`` held-out samples drawn once from (seed): the probe of ``probe.py``."""
        return self.rows(self.subset(self.monitor_rows, n, 0x9E0))

    def eval_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(evaluated, reference) rows of the start and end evaluations: at most ``n`` of the
        monitored split (1,000 training rows when there is none), drawn once from (seed), and
        as many training rows, drawn once from (seed): bounded whatever the data's size, the
        same rows for the same seed, the whole split when it is no larger than ``n``."""
        if len(self.monitor_rows):
            held = self.subset(self.monitor_rows, n, 0xE5A)
        else:
            held = self.subset(self.train_rows, min(1000, n), 0x7A1)
        return held, self.subset(self.train_rows, min(len(held), len(self.train_rows)), 0x7A1)

    def subset(self, rows: np.ndarray, n: int, tag: int) -> np.ndarray:
        """``n`` of ``rows``, drawn once from (seed, ``tag``), sorted (all of them if fewer)."""
        if n >= len(rows):
            return rows
        return np.sort(np.random.default_rng([self.seed, tag]).choice(rows, n, replace=False))


def open_data(cfg: Config, unit_range: bool, values: bool = True) -> Data:
    """Open, split, check and measure the configured data; raises DataError on any problem.
    Without ``values`` only the headers are read (O(files)): the values are then checked as
    micro-batches are read, and the statistics come from the run's manifest
    (``manifest.py``) or ``measure``."""
    d = cfg.data
    if d.source in OFFICIAL:
        src = open_official(d.source, d.path)
    else:
        src = open_source(d.source, d.path, d.labels, d.key, cfg.seed, d.bars_size,
                          d.bars_samples)
    pool = src.rows - src.test_rows  # the rows a split may be drawn from
    n = pool if d.limit is None else min(d.limit, pool)
    if n == 0:
        raise DataError(f"data: {src.description} holds no samples")
    if src.features == 0:
        raise DataError(f"data: {src.description} has no features: each of its {src.rows} "
                        "samples holds 0 values (give an array of shape (samples, features) "
                        "with features >= 1)")
    n_held = int(round((d.validation if src.test_rows else d.held_out) * n))
    if n - n_held < 1:
        raise DataError(f"data: {n} samples leave none for training with "
                        f"{'validation' if src.test_rows else 'held_out'}="
                        f"{d.validation if src.test_rows else d.held_out}")
    split = np.random.default_rng([cfg.seed, 0x5B17]).permutation(n)
    carved = np.sort(split[:n_held])
    # an official test split is the held-out split, whole (figures then compare with papers)
    held = np.arange(pool, src.rows) if src.test_rows else carved
    data = Data(
        source=src,
        train_rows=np.sort(split[n_held:]),
        held_rows=held,
        valid_rows=carved if src.test_rows else None,
        stochastic_seed=d.stochastic_binarize,
        scale=d.scale if d.scale is not None else src.default_scale,
        binarize=d.binarize,
        mean=None,
        std=None,
        feature_mean=np.zeros(src.features, np.float32),
        unit_range=False,
        batch_size=cfg.train.batch_size,
        drop_last=d.drop_last,
        shuffle=d.shuffle,
        seed=cfg.seed,
        eval_samples=cfg.monitor.final_samples,
    )
    if data.batches_per_epoch == 0:
        raise DataError(f"data: {len(data.train_rows)} training samples make no full micro-batch "
                        f"of {cfg.train.batch_size} with data.drop_last=true; lower "
                        "train.batch_size or set data.drop_last=false")
    data.unit_range = unit_range and not d.standardize
    if cfg.labels is not None:
        data.classes = class_indices(src, cfg.labels, f"layers.{len(cfg.layers) - 1}.labels")
    if values:
        measure(data, cfg, unit_range)
    return data


def measure(data: Data, cfg: Config, unit_range: bool) -> None:
    """Read the statistics' sample (``_stats_rows``) ``_CHUNK`` rows at a time (memory bounded
    whatever the data's size): check its values and take the mean (and variance) of its
    training rows. The values it leaves out are checked as their micro-batches are read."""
    standardize = cfg.data.standardize
    used, is_train = _stats_rows(data, cfg)
    n_train = int(is_train.sum()) if is_train is not None else len(used)
    total = np.zeros(data.features, np.float64)
    total_sq = np.zeros(data.features, np.float64)
    for lo in range(0, len(used), _CHUNK):
        rows = used[lo : lo + _CHUNK]
        x = data.preprocess(data.raw(rows), rows)
        data.check(x, rows)
        xt = x[is_train[rows]] if is_train is not None else x
        # row after row per feature, in float64: the sums of a float64 copy, bit for bit
        total += np.add.reduce(xt, axis=0, dtype=np.float64)
        if standardize:
            total_sq += np.add.reduce(np.square(xt.astype(np.float64)), axis=0)
    mean = total / n_train
    if standardize:
        std = np.sqrt(np.maximum(total_sq / n_train - mean**2, 0.0))
        data.mean = mean.astype(np.float32)
        data.std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # constant pixels stay 0
    else:
        data.feature_mean = mean.astype(np.float32)
    if unit_range and standardize:  # checked after standardising: it is what layer 0 sees
        data.unit_range = True
        for lo in range(0, len(used), _CHUNK):
            rows = used[lo : lo + _CHUNK]
            data.check(data.preprocess(data.raw(rows), rows), rows)
    data.checked = True


def _stats_rows(data: Data, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows read before the run, which of the source's rows train) for ``measure``: every
    sample in use when the training split has at most ``data.stats_samples`` rows (the whole
    set's statistics, as before the bound), else that many training rows drawn once from
    (seed), sorted (all of them training rows: no mask)."""
    src, bound = data.source, cfg.data.stats_samples
    if len(data.train_rows) > bound:
        return data.subset(data.train_rows, bound, 0x57A7), None
    pool = src.rows - src.test_rows
    n = pool if cfg.data.limit is None else min(cfg.data.limit, pool)
    is_train = np.zeros(src.rows, bool)  # (a byte a sample: the row arrays are 8)
    is_train[data.train_rows] = True
    used = np.concatenate([np.arange(n), np.arange(pool, src.rows)]) if src.test_rows \
        else np.arange(n)
    return used, is_train


class Prefetcher:
    """Reads micro-batches on a background thread, ``depth`` ahead of the consumer; with
    ``depth`` 0, on the consumer's own thread as it asks for them."""

    _END = object()

    def __init__(self, data: Data, schedule_positions: Iterable[tuple[int, int, int]],
                 depth: int, dtype: torch.dtype, timeout: float = 600.0) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._timeout = timeout
        self._inline = (data, schedule_positions, dtype) if depth == 0 else None
        self._thread = threading.Thread(
            target=self._run, args=(data, schedule_positions, dtype), daemon=True,
            name="pipedbn-prefetch",
        )
        if self._inline is None:
            self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, data: Data, positions: Iterable[tuple[int, int, int]],
             dtype: torch.dtype) -> None:
        try:
            for item in _read(data, positions, dtype):
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """``(m, x)``, or ``(m, x, labels)`` when the data has ``classes``."""
        if self._inline is not None:
            yield from _read(*self._inline)
            return
        while True:
            try:
                item = self._q.get(timeout=self._timeout)
            except queue.Empty:
                raise TimeoutError(f"no micro-batch from the data reader in {self._timeout} s")\
                    from None
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        if self._inline is None:
            self._thread.join(timeout=5)


def _read(data: Data, positions: Iterable[tuple[int, int, int]], dtype: torch.dtype
          ) -> Iterator[tuple[Any, ...]]:
    for m, epoch, j in positions:
        x = torch.from_numpy(data.micro_batch(epoch, j)).to(dtype)
        y = data.micro_batch_labels(epoch, j)
        yield (m, x) if y is None else (m, x, torch.from_numpy(y))
