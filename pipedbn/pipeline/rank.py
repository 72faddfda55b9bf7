"""One rank's run: what it was given at setup and what it keeps from segment to segment."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from pipedbn.config import Config
from pipedbn.data.loader import Data
from pipedbn.observe.monitor import Metrics
from pipedbn.observe.progress import Progress
from pipedbn.pipeline.context import RankContext
from pipedbn.pipeline.runner import StageStats
from pipedbn.pipeline.schedule import Schedule
from pipedbn.pipeline.setup import Setup


@dataclass
class RankRun:
    cfg: Config
    ctx: RankContext
    setup: Setup
    schedule: Schedule
    metrics: Metrics
    progress: Progress
    stats: StageStats
    kv: dist.Store | None
    """The process group's store of this attempt; None in a run in one process."""
    data: Data | None
    """The data, where this rank has opened it (rank 0; a replica of stage 0 opens its own)."""
