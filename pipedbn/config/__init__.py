"""Experiment config: typed sections, YAML files, ``key=value`` overrides, and every check at once.

A config file is YAML with the sections below. Every field has a default except the list of
layers. ``rbm`` holds the training settings shared by all layers; an entry of ``layers`` may
override any of them for one layer. Overrides on the command line use dotted paths with list
indices (``layers.1.hidden=256``, ``rbm.lr=0.05``, ``data.path=[a.npy,b.npy]``); values are parsed
as YAML. Problems are collected, not raised one by one, so a user sees every mistake in one run.

Each section is a dataclass in its own module that checks its own fields (``problems()``):
``layers`` (``rbm`` and ``layers``), ``data``, ``train``, ``pipeline``, ``balancer``,
``monitor``, ``straggler``, ``run`` (``run`` and ``checkpoint``). ``experiment`` holds the whole
``Config`` and collects every section's problems; ``loader`` reads YAML and overrides; ``build``
turns plain dicts into typed sections. This package re-exports the public names.
"""

from pipedbn.config.balancer import BalancerConfig
from pipedbn.config.build import MOVED
from pipedbn.config.data import DataConfig
from pipedbn.config.experiment import Config, dump_yaml, from_dict, resolve_defaults, to_dict
from pipedbn.config.layers import LayerConfig, RBMConfig
from pipedbn.config.loader import (
    DuplicateKeyError,
    StrictLoader,
    TextError,
    apply_override,
    config_from_text,
    load_config,
    load_yaml,
    read_text,
)
from pipedbn.config.monitor import MonitorConfig
from pipedbn.config.pipeline import PipelineConfig
from pipedbn.config.run import CheckpointConfig, RunConfig
from pipedbn.config.straggler import StragglerConfig
from pipedbn.config.train import TrainConfig

__all__ = [
    "MOVED", "BalancerConfig", "CheckpointConfig", "Config", "DataConfig", "DuplicateKeyError",
    "LayerConfig", "MonitorConfig", "PipelineConfig", "RBMConfig", "RunConfig", "StragglerConfig",
    "StrictLoader", "TextError", "TrainConfig", "apply_override", "config_from_text",
    "dump_yaml", "from_dict", "load_config", "load_yaml", "read_text", "resolve_defaults",
    "to_dict",
]
