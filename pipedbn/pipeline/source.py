"""The first stage's input: micro-batches read from the data (a background ``Prefetcher``),
with the held-out probe attached to those that carry one (``probe.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from pipedbn.config import Config
from pipedbn.data.loader import Data, Prefetcher
from pipedbn.pipeline.context import STREAM_END, Ending, MicroBatch
from pipedbn.pipeline.layers import dtype_of


class DataSource:
    def __init__(self, reader: Prefetcher, probe: torch.Tensor | None,
                 is_probe: Callable[[int], bool], stage: int) -> None:
        self.reader, self.probe, self.is_probe, self.stage = reader, probe, is_probe, stage
        self._reads: Iterator[tuple[Any, ...]] = iter(reader)
        self.ending = STREAM_END

    def take(self, m: int) -> MicroBatch:
        got, x, *labels = next(self._reads)
        if got != m:
            raise RuntimeError(f"stage {self.stage}: read micro-batch {got}, expected {m}")
        probe = self.probe if self.probe is not None and self.is_probe(m) else None
        return MicroBatch(m, x, probe, labels[0] if labels else None)

    def finish(self) -> Ending:
        return STREAM_END

    def close(self) -> None:
        self.reader.close()


def held_probe(cfg: Config, data: Data, device: torch.device) -> torch.Tensor | None:
    """The held-out samples every probe carries (None without monitoring or held-out data)."""
    mo = cfg.monitor
    if not mo.enabled or not len(data.held_rows) or not (mo.eval_every or mo.images_every):
        return None
    return torch.from_numpy(data.held_sample(mo.eval_samples)).to(device=device,
                                                                  dtype=dtype_of(cfg))
