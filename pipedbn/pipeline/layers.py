"""A run's layers and schedule, as pure functions of the config (and, for layer 0, the data
mean), so that any process can build any layer."""

from __future__ import annotations

import numpy as np
import torch

from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.model.rbm import RBM, RBMSettings
from pipedbn.pipeline.schedule import Schedule, build_schedule
from stages import registry
from stages.label import LabelRBM

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_of(cfg: Config) -> torch.dtype:
    return _DTYPES[cfg.train.dtype]


def make_schedule(cfg: Config, batches_per_epoch: int) -> Schedule:
    return build_schedule(cfg.train.schedule, batches_per_epoch,
                          [layer.epochs for layer in cfg.layers], cfg.train.offset_epochs)


def make_layer(cfg: Config, i: int, features: int, schedule: Schedule, device: torch.device,
               visible_mean: np.ndarray | None = None) -> RBM:
    """Layer i, freshly initialised: a pure function of (config, seed, i) and, for layer 0, the
    data mean (``visible_mean``)."""
    assert (i == 0) == (visible_mean is not None)
    sizes = [features] + cfg.sizes
    lc = cfg.layers[i]
    extra = {"labels": lc.labels} if lc.labels else {}
    return registry.get(lc.kind)(
        sizes[i], sizes[i + 1], RBMSettings.of(lc), seed=cfg.seed, index=i,
        steps_per_epoch=schedule.batches_per_epoch, total_steps=schedule.steps(i),
        device=device, dtype=dtype_of(cfg),
        visible_mean=torch.from_numpy(visible_mean) if visible_mean is not None else None,
        **extra,
    )


def train_on(layer: RBM, x: torch.Tensor, labels: torch.Tensor | None, m: int = -1,
             stats: dict[str, float] | None = None, replicas: int = 1) -> torch.Tensor:
    """One update of ``layer`` on micro-batch ``m``: a label layer (``stages/label.py``) trains
    on the features with their labels, every other kind on the features alone."""
    if isinstance(layer, LabelRBM):
        assert labels is not None, f"layer {layer.index}: a label layer needs the labels"
        return layer.train_labelled(x, labels, m, stats, replicas)
    return layer.train_step(x, m, stats, replicas)


def make_layers(cfg: Config, data: Data, schedule: Schedule, device: torch.device) -> list[RBM]:
    return [make_layer(cfg, i, data.features, schedule, device,
                       data.feature_mean if i == 0 else None) for i in range(len(cfg.layers))]
