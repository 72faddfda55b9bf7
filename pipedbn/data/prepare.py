"""The data of a run, opened once for it: the config checked against the data, and the values
checked once per run (``loader.measure``) or taken on trust from the run's manifest
(``manifest.py``) when its files are unchanged."""

from __future__ import annotations

from pathlib import Path

from pipedbn.config import Config
from pipedbn.data.loader import Data, measure, open_data
from pipedbn.data.manifest import read_manifest, trust, verify
from pipedbn.errors import ConfigError
from stages import registry


def bernoulli_input(cfg: Config) -> bool:
    """Whether layer 0 needs its input within [0, 1]."""
    return registry.get(cfg.layers[0].kind).unit_visible


def check_config(cfg: Config, data: Data) -> None:
    """The config's fields that must agree with the data's shape."""
    first = cfg.layers[0]
    if first.visible is not None and first.visible != data.features:
        raise ConfigError([f"layers.0.visible: {first.visible}, but the data has "
                           f"{data.features} features per sample (remove it or fix the data)"])
    shape = cfg.monitor.image_shape
    if shape is not None and shape[0] * shape[1] != data.features:
        raise ConfigError([f"monitor.image_shape: {shape[0]} x {shape[1]} is not the "
                           f"{data.features} features of one sample (fix it or remove it)"])


def run_data(cfg: Config, run_dir: Path | None, values: bool) -> Data:
    """The data of the run in ``run_dir`` (None: a run not yet created), headers first. With
    the run's manifest, its files are verified (O(files)) and its statistics trusted; without
    one, ``values`` says whether this process reads and checks the statistics' sample now (bounded
    memory), or leaves that to the process that will (``Data.checked`` stays False)."""
    unit_range = bernoulli_input(cfg)
    data = open_data(cfg, unit_range, values=False)
    check_config(cfg, data)
    record = read_manifest(run_dir) if run_dir is not None else None
    if record is not None:
        assert run_dir is not None
        verify(record, data, run_dir)
        trust(record, data)
    elif values:
        measure(data, cfg, unit_range)
    return data
