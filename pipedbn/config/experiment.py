"""The whole config: every section, and one list of every problem in it.

Each section checks its own fields (``problems()``); ``Config.problems`` asks each in turn,
handing a section what it needs of the others (the number of layers, the train section's
device), so a user sees every mistake of a config in one report.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipedbn.config.balancer import BalancerConfig
from pipedbn.config.build import build
from pipedbn.config.data import DataConfig
from pipedbn.config.layers import LayerConfig, RBMConfig, layer_entries
from pipedbn.config.monitor import MonitorConfig
from pipedbn.config.pipeline import PipelineConfig
from pipedbn.config.run import CheckpointConfig, RunConfig
from pipedbn.config.straggler import StragglerConfig
from pipedbn.config.train import TrainConfig


@dataclass
class Config:
    layers: list[LayerConfig]
    """The RBM layers, bottom first. Each entry needs ``hidden`` and may override ``rbm`` fields."""
    seed: int = 0
    """Seed of everything random: weights, data order, Gibbs sampling."""
    rbm: RBMConfig = field(default_factory=RBMConfig)
    """Training settings shared by all layers (each layer may override them)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where samples come from and how they are prepared."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Schedule, micro-batches, device and threads."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """How stages talk to each other in a distributed run."""
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    """Plan of ranks per layer, replica sync and re-planning."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Metrics, TensorBoard and the progress display."""
    straggler: StragglerConfig = field(default_factory=StragglerConfig)
    """Optional artificial slowdown of one layer or rank (to study balancing on a small machine)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How often the training state is saved, and how many checkpoints are kept."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run directory goes."""

    @property
    def labels(self) -> int | None:
        """The top layer's label units (K), if it has them."""
        return self.layers[-1].labels if self.layers else None

    @property
    def sizes(self) -> list[int]:
        """Hidden sizes bottom to top; the visible size of layer 0 comes from the data."""
        return [layer.hidden for layer in self.layers]

    def problems(self) -> list[str]:
        """Every problem of every section (the checks that need no data; the data-dependent
        ones live in ``pipedbn/data``)."""
        p: list[str] = []
        for i, layer in enumerate(self.layers):
            p += layer.problems(i, self.layers[i - 1] if i > 0 else None)
            if layer.labels is not None and i < len(self.layers) - 1:
                p.append(f"layers.{i}.labels: label units belong to the top layer (layers."
                         f"{len(self.layers) - 1}); move them there")
        p += self.data.problems()
        p += self.train.problems()
        if self.seed < 0:
            p.append(f"seed: must be >= 0, got {self.seed}")
        p += self.pipeline.problems(self.train)
        p += self.balancer.problems(len(self.layers))
        p += self.monitor.problems()
        p += self.straggler.problems(len(self.layers))
        p += self.checkpoint.problems()
        p += self.run.problems()
        return p


def from_dict(raw: dict[str, Any], problems: list[str]) -> Config | None:
    """Build a Config, merging ``rbm`` defaults into every layer entry; appends to ``problems``."""
    raw = copy.deepcopy(raw)
    raw["layers"] = layer_entries(raw, problems)
    config: Config | None = build(Config, raw, "", problems)
    return config


def resolve_defaults(cfg: Config) -> Config:
    """Fill defaults that depend on other fields (kind's lr, method's momentum, chains)."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg.layers:
        layer.resolve_defaults(cfg.train.batch_size)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the config, layers fully expanded (the ``rbm`` section kept for reference)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
